//! Side-by-side diffs of two trajectories (an episode and its
//! counterfactual re-run), turn by turn, for terminals.

/// One turn of a trajectory: what the policy wrote and the tool response
/// it then saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn<'a> {
    /// The assistant turn.
    pub text: &'a str,
    /// The tool response after it, if any.
    pub tool: Option<&'a str>,
}

/// One trajectory with its label and score.
#[derive(Debug, Clone, PartialEq)]
pub struct Side<'a> {
    /// `e-12 (original)`.
    pub label: String,
    /// Reward, when it finished.
    pub reward: Option<f64>,
    /// Token F1, when it finished.
    pub f1: Option<f64>,
    /// Its turns.
    pub turns: Vec<Turn<'a>>,
}

/// The index of the first turn that differs, if any.
pub fn first_difference(a: &Side<'_>, b: &Side<'_>) -> Option<usize> {
    (0..a.turns.len().max(b.turns.len())).find(|&i| a.turns.get(i) != b.turns.get(i))
}

/// Lines of at most `width` characters (wrapping long lines), at most
/// `max_lines` of them (the last one saying how many were left out).
fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let chars: Vec<char> = line.chars().filter(|c| !c.is_control()).collect();
        if chars.is_empty() {
            out.push(String::new());
        }
        for chunk in chars.chunks(width.max(1)) {
            out.push(chunk.iter().collect());
        }
    }
    if out.len() > max_lines {
        let left = out.len() - (max_lines - 1);
        out.truncate(max_lines - 1);
        out.push(format!("… {left} more line(s)"));
    }
    out
}

fn cell(turn: Option<&Turn<'_>>, width: usize, max_lines: usize) -> Vec<String> {
    match turn {
        None => vec!["(no turn)".to_string()],
        Some(t) => {
            let mut lines = wrap(t.text, width, max_lines);
            if let Some(tool) = t.tool {
                lines.push("─".repeat(width.min(12)));
                lines.extend(wrap(tool, width, max_lines / 2));
            }
            lines
        }
    }
}

fn score(side: &Side<'_>) -> String {
    match (side.reward, side.f1) {
        (Some(r), Some(f)) => format!("reward {r:.3}, F1 {f:.3}"),
        (Some(r), None) => format!("reward {r:.3}"),
        _ => "unfinished".into(),
    }
}

fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n >= width {
        s.chars().take(width).collect()
    } else {
        format!("{s}{}", " ".repeat(width - n))
    }
}

/// The two trajectories in two columns, `width` characters wide in all.
/// Identical turns show one line each and are marked `=`; differing ones
/// are shown in full (up to a limit) and marked `≠`.
pub fn side_by_side(a: &Side<'_>, b: &Side<'_>, width: usize) -> String {
    let col = (width.saturating_sub(12) / 2).max(20);
    let mut out = String::new();
    let row = |out: &mut String, mark: &str, turn: &str, l: &str, r: &str| {
        out.push_str(&format!("{mark} {turn:>4} │ {} │ {}\n", pad(l, col), r));
    };
    row(&mut out, " ", "turn", &a.label, &b.label);
    row(&mut out, " ", "", &score(a), &score(b));
    out.push_str(&format!(
        "{}┼{}┼{}\n",
        "─".repeat(7),
        "─".repeat(col + 2),
        "─".repeat(col + 1)
    ));
    for i in 0..a.turns.len().max(b.turns.len()) {
        let (l, r) = (a.turns.get(i), b.turns.get(i));
        let same = l == r;
        let (left, right) = if same {
            let first = |t: Option<&Turn<'_>>| t.map(|t| wrap(t.text, col, 1).remove(0)).unwrap_or_default();
            (vec![first(l)], vec![first(r)])
        } else {
            (cell(l, col, 16), cell(r, col, 16))
        };
        for k in 0..left.len().max(right.len()) {
            let mark = if k > 0 {
                " "
            } else if same {
                "="
            } else {
                "≠"
            };
            let turn = if k == 0 { i.to_string() } else { String::new() };
            row(
                &mut out,
                mark,
                &turn,
                left.get(k).map_or("", String::as_str),
                right.get(k).map_or("", String::as_str),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side<'a>(label: &str, reward: f64, turns: Vec<Turn<'a>>) -> Side<'a> {
        Side {
            label: label.into(),
            reward: Some(reward),
            f1: Some(reward),
            turns,
        }
    }

    #[test]
    fn identical_turns_are_one_line_and_the_first_difference_is_marked() {
        let search = Turn {
            text: "<think>look</think>\n<tool_call>search</tool_call>",
            tool: Some("<tool_response>results</tool_response>"),
        };
        let a = side(
            "e-1 (original)",
            1.0,
            vec![
                search,
                Turn {
                    text: "<answer>Ada</answer>",
                    tool: None,
                },
            ],
        );
        let b = side(
            "e-9 (re-run)",
            0.0,
            vec![
                search,
                Turn {
                    text: "<answer>Bob</answer>",
                    tool: None,
                },
            ],
        );
        assert_eq!(first_difference(&a, &b), Some(1));
        assert_eq!(first_difference(&a, &a), None);
        let text = side_by_side(&a, &b, 100);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("e-1 (original)") && lines[0].contains("e-9 (re-run)"),
            "{text}"
        );
        assert!(
            lines[1].contains("reward 1.000") && lines[1].contains("reward 0.000"),
            "{text}"
        );
        let same: Vec<&&str> = lines.iter().filter(|l| l.starts_with('=')).collect();
        assert_eq!(same.len(), 1, "one identical turn, one line: {text}");
        let differ = lines.iter().find(|l| l.starts_with('≠')).expect("a differing turn");
        assert!(
            differ.contains("<answer>Ada</answer>") && differ.contains("<answer>Bob</answer>"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_turn_and_long_text_are_shown_within_the_width() {
        let long = "x".repeat(500);
        let a = side(
            "a",
            0.0,
            vec![Turn {
                text: &long,
                tool: None,
            }],
        );
        let b = side("b", 0.0, vec![]);
        let text = side_by_side(&a, &b, 80);
        assert!(text.contains("(no turn)"), "{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
        assert!(
            text.lines().filter(|l| l.contains("xxxx")).count() >= 2,
            "wrapped: {text}"
        );
    }
}
