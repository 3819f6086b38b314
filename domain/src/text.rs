//! Free text from people and outside systems (reasons, details, prompts, rationales).

/// 1 to `max` characters once trimmed, with no control characters other than line
/// breaks and tabs. The error says the rule in words, naming `field`.
pub fn check(field: &str, value: &str, max: usize) -> Result<(), String> {
    let length = value.trim().chars().count();
    let control = value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    if length == 0 || length > max || control {
        return Err(format!("{field} must be 1 to {max} characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn text_is_bounded_and_free_of_control_characters() {
        assert!(check("reason", "too small", 10).is_ok());
        assert!(check("prompt", "line one\nline two", 100).is_ok());
        assert_eq!(
            check("reason", "  ", 10),
            Err("reason must be 1 to 10 characters".into())
        );
        assert!(check("reason", "eleven char", 10).is_err());
        assert!(check("reason", "bell\u{7}", 10).is_err());
    }
}
