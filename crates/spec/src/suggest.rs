//! "Did you mean …?": the closest known word to a misspelt one.

/// The candidate closest to `input`, when one is close enough to be a likely misspelling.
///
/// Close means a Damerau-Levenshtein distance (which counts a swap of neighbours as one edit)
/// of at most 1 for candidates of up to 4 characters and at most 2 for longer ones, compared
/// ignoring ASCII case; or, for candidates of 8 characters and more, a Jaro-Winkler similarity
/// of at least 0.92, which catches truncated or extended long keys
/// (`availability_zone` → `availability_zone_group`). Ties go to the higher similarity, then
/// to the earlier candidate.
pub(crate) fn closest_match<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    let mut best: Option<(&'a str, usize, f64)> = None;
    for candidate in candidates {
        let lowered = candidate.to_ascii_lowercase();
        if lowered == input {
            return Some(candidate);
        }
        let distance = strsim::damerau_levenshtein(&input, &lowered);
        let similarity = strsim::jaro_winkler(&input, &lowered);
        let length = lowered.chars().count();
        let allowed_distance = if length <= 4 { 1 } else { 2 };
        let close = distance <= allowed_distance || (length >= 8 && similarity >= 0.92);
        if !close {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, best_distance, best_similarity)) => {
                distance < best_distance
                    || (distance == best_distance && similarity > best_similarity)
            }
        };
        if better {
            best = Some((candidate, distance, similarity));
        }
    }
    best.map(|(candidate, _, _)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTANCE_KEYS: [&str; 8] = [
        "name",
        "region",
        "availability_zone_group",
        "instance_type",
        "storage_class",
        "storage_size",
        "health",
        "env",
    ];

    #[test]
    fn finds_likely_misspellings() {
        for (input, expected) in [
            ("storage_clas", "storage_class"),
            ("stroage_size", "storage_size"),
            ("helth", "health"),
            ("Region", "region"),
            ("nmae", "name"),
            ("availability_zone", "availability_zone_group"),
            ("instance", "instance_type"),
            ("ENV", "env"),
        ] {
            assert_eq!(closest_match(input, INSTANCE_KEYS), Some(expected), "{input}");
        }
    }

    #[test]
    fn stays_quiet_when_nothing_is_close() {
        for input in ["spot", "x", "a", "completely_different", "ev_vars"] {
            assert_eq!(closest_match(input, INSTANCE_KEYS), None, "{input}");
        }
    }
}
