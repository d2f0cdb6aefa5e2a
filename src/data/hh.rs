//! Anthropic HH-RLHF transcripts: `"\n\nHuman: <question>\n\nAssistant: <response>"`,
//! possibly with several turns. The prompt/response split follows the reference exactly
//! (docs/reference.md §1.2): the prompt is everything up to and including the **last**
//! `"\n\nAssistant:"`, the response is everything after it, and the chosen and rejected
//! transcripts are split independently.

/// The marker whose last occurrence ends the prompt (12 characters).
pub const ASSISTANT: &str = "\n\nAssistant:";

/// Splits a transcript into (prompt, response); `None` if it has no assistant turn.
pub fn split_transcript(text: &str) -> Option<(&str, &str)> {
    text.rfind(ASSISTANT).map(|i| {
        let end = i + ASSISTANT.len();
        (&text[..end], &text[end..])
    })
}

/// The marker that opens a human turn.
pub const HUMAN: &str = "\n\nHuman:";

/// How many human turns a prompt holds (1 for a single-turn dialogue).
pub fn human_turns(prompt: &str) -> usize {
    prompt.matches(HUMAN).count()
}

/// Wraps a plain prompt and response into a single-turn HH transcript pair of parts,
/// the form the reference models were trained on: `("\n\nHuman: p\n\nAssistant:", " r")`.
pub fn wrap(prompt: &str, response: &str) -> (String, String) {
    (
        format!("\n\nHuman: {prompt}{ASSISTANT}"),
        format!(" {response}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_last_assistant_marker() {
        let t = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this";
        let (p, r) = split_transcript(t).unwrap();
        assert_eq!(
            p,
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
        );
        assert_eq!(r, " like this");
        assert_eq!(format!("{p}{r}"), t);
    }

    #[test]
    fn fake_turn_inside_a_response_moves_the_split() {
        // docs/reference.md §1.2: a rejected response containing a fake marker is split there.
        let t = "\n\nHuman: q\n\nAssistant: a\n\nAssistant: b";
        assert_eq!(split_transcript(t).unwrap().1, " b");
    }

    #[test]
    fn no_marker_is_none() {
        assert!(split_transcript("\n\nHuman: q").is_none());
    }

    #[test]
    fn empty_and_space_responses() {
        assert_eq!(
            split_transcript("\n\nHuman: q\n\nAssistant:").unwrap().1,
            ""
        );
        assert_eq!(
            split_transcript("\n\nHuman: q\n\nAssistant: ").unwrap().1,
            " "
        );
    }

    #[test]
    fn counts_human_turns() {
        let one = "\n\nHuman: q\n\nAssistant:";
        let two = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:";
        assert_eq!(human_turns(one), 1);
        assert_eq!(human_turns(two), 2);
        assert_eq!(human_turns("plain"), 0);
    }

    #[test]
    fn wrap_matches_hh_form() {
        let (p, r) = wrap("q", "a");
        assert_eq!(format!("{p}{r}"), "\n\nHuman: q\n\nAssistant: a");
    }
}
