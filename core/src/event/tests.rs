use super::*;

#[test]
fn fixtures_cover_every_kind_once_in_code_order() {
    let kinds: Vec<EventKind> = fixtures::payloads().iter().map(Payload::kind).collect();
    assert_eq!(kinds, EventKind::ALL);
}

#[test]
fn kind_codes_and_names_round_trip() {
    for &kind in EventKind::ALL {
        assert_eq!(EventKind::from_code(kind.code()), Some(kind));
        assert_eq!(EventKind::from_name(kind.name()), Some(kind));
    }
    assert_eq!(EventKind::from_code(0), None);
    assert_eq!(EventKind::from_code(999), None);
    assert_eq!(EventKind::from_name("no_such_kind"), None);
}

#[test]
fn every_event_round_trips_through_json() {
    for (i, event) in fixtures::events().into_iter().enumerate() {
        let record = Record {
            seq: Seq(i as u64 + 1),
            event,
        };
        let json = serde_json::to_string(&record).unwrap();
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record, "{json}");
    }
}

#[test]
fn json_form_is_flat_with_kind_and_display_ids() {
    let record = Record {
        seq: Seq(3),
        event: fixtures::events().remove(1),
    };
    expect_test::expect![[r#"{"seq":3,"run":"r-7","ts":"2026-11-21T12:00:01.000000000Z","kind":"run_finished","status":"completed","steps_completed":2,"message":"done"}"#]]
        .assert_eq(&serde_json::to_string(&record).unwrap());
}

#[test]
fn episode_ids_and_blob_refs_are_found() {
    let payloads = fixtures::payloads();
    let with_episode = payloads.iter().filter(|p| p.episode_id().is_some()).count();
    assert_eq!(with_episode, 8);
    let refs: Vec<BlobRef> = payloads.iter().flat_map(Payload::blob_refs).collect();
    assert_eq!(refs.len(), 3);
    assert_eq!(refs[2].len, 48_213);
}

#[test]
fn digests_parse_from_hex() {
    let d = Digest([0xab; 32]);
    assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
    assert_eq!(d.short(), "abababababab");
    assert_eq!(Digest::from_hex("xyz"), None);
}
