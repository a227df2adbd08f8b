mod slt;
