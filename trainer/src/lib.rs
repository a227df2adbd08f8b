//! Policies, the rollout engine, GRPO, checkpoints and resume (to be built
//! by the agent, model-policy and trainer issues). May use `core`, `store`
//! and `replay`; the web is reached only through `replay`'s gateway.
