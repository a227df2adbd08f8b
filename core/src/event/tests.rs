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

/// Renders `docs/EVENTS.md` from the doc comments of `event.rs`, so the
/// reference cannot drift from the code. Regenerate with
/// `UPDATE_EXPECT=1 cargo test -p fathom-core`.
#[allow(clippy::type_complexity)] // Plain tuples keep this one-off parser short.
fn render_reference(src: &str) -> String {
    let mut structs: Vec<(String, String, Vec<(String, String, String)>)> = Vec::new();
    let mut enums: Vec<(String, String, Vec<(String, String)>)> = Vec::new();
    let mut kinds: Vec<(String, String, String)> = Vec::new();
    let mut doc: Vec<String> = Vec::new();
    let mut current_struct: Option<(String, String, Vec<(String, String, String)>)> = None;
    let mut current_enum: Option<(String, String, Vec<(String, String)>)> = None;
    let mut in_vocab = false;
    let mut in_attr = false;
    for line in src.lines() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("///") {
            doc.push(d.trim().to_string());
            continue;
        }
        // Attributes (possibly over several lines) sit between a doc
        // comment and its item: keep the doc across them.
        if in_attr {
            in_attr = !t.ends_with(")]");
            continue;
        }
        if t.starts_with("#[") {
            in_attr = !t.ends_with(']');
            continue;
        }
        if t.starts_with("vocabulary_enum!(") {
            in_vocab = true;
        } else if let Some(rest) = t.strip_prefix("pub struct ")
            && rest.ends_with('{')
        {
            let name = rest.trim_end_matches('{').trim().to_string();
            current_struct = Some((name, doc.join(" "), Vec::new()));
        } else if in_vocab && t.ends_with('{') && current_enum.is_none() {
            let name = t.trim_end_matches('{').trim().to_string();
            current_enum = Some((name, doc.join(" "), Vec::new()));
        } else if let Some((_, _, fields)) = current_struct.as_mut()
            && let Some(rest) = t.strip_prefix("pub ")
            && let Some((field, ty)) = rest.split_once(": ")
        {
            fields.push((field.to_string(), ty.trim_end_matches(',').to_string(), doc.join(" ")));
        } else if let Some((_, _, variants)) = current_enum.as_mut()
            && let Some((_, text)) = t.split_once(" = \"")
        {
            variants.push((text.trim_end_matches("\",").to_string(), doc.join(" ")));
        } else if t == "}" {
            if let Some(s) = current_struct.take() {
                structs.push(s);
            }
        } else if t == ");" && in_vocab {
            in_vocab = false;
            if let Some(e) = current_enum.take() {
                enums.push(e);
            }
        } else if let Some((name, rest)) = t.split_once(" = ")
            && let Some((code, kind)) = rest.split_once(", \"")
            && code.chars().all(|c| c.is_ascii_digit())
        {
            kinds.push((
                code.to_string(),
                kind.trim_end_matches("\";").to_string(),
                name.to_string(),
            ));
        }
        doc.clear();
    }
    let mut out = String::from(
        "# Event reference\n\n\
         <!-- Generated from core/src/event.rs by a test in core/src/event/tests.rs; \
         regenerate with `UPDATE_EXPECT=1 cargo test -p fathom-core`. Do not edit by hand. -->\n\n\
         Every event has a sequence number (`seq`, dense from 1, assigned by the log), \
         a run id (`run`), a timestamp from the injected clock (`ts`), and one payload. \
         In JSON (`fathom log tail`) the payload's fields sit beside `seq`, `run`, `ts` and `kind`. \
         The byte layout is in `store/README.md`; layouts never change once shipped.\n\n\
         | code | kind | payload |\n|---:|---|---|\n",
    );
    for (code, kind, name) in &kinds {
        out.push_str(&format!("| {code} | `{kind}` | [{name}](#{}) |\n", name.to_lowercase()));
    }
    let kind_names: Vec<&str> = kinds.iter().map(|k| k.2.as_str()).collect();
    let (payloads, others): (Vec<_>, Vec<_>) = structs.iter().partition(|s| kind_names.contains(&s.0.as_str()));
    for (title, group) in [("Payloads", payloads), ("Shared types", others)] {
        out.push_str(&format!("\n## {title}\n"));
        for (name, doc, fields) in group {
            out.push_str(&format!(
                "\n### {name}\n\n{doc}\n\n| field | type | meaning |\n|---|---|---|\n"
            ));
            for (f, ty, d) in fields {
                out.push_str(&format!("| `{f}` | `{ty}` | {d} |\n"));
            }
        }
    }
    out.push_str("\n## Vocabularies\n\nStored as the variant's index; shown in JSON and SQL as the text below.\n");
    for (name, doc, variants) in &enums {
        out.push_str(&format!("\n### {name}\n\n{doc}\n\n| value | meaning |\n|---|---|\n"));
        for (v, d) in variants {
            out.push_str(&format!("| `{v}` | {d} |\n"));
        }
    }
    out
}

#[test]
fn events_reference_is_up_to_date() {
    let rendered = render_reference(include_str!("../event.rs"));
    assert!(rendered.contains("| 15 | `snapshot_committed` |"));
    expect_test::expect_file!["../../../docs/EVENTS.md"].assert_eq(&rendered);
}
