//! Reading HTTP-dates (RFC 9110 §5.6.7) the way the RFC asks recipients
//! to: in any of the three formats (IMF-fixdate, obsolete RFC 850, asctime),
//! with names in any case, and with a weekday that does not match the date.
//! The weekday is redundant (the day, month and year say which day it is),
//! so a wrong one is read as the date it names, to the second, rather than
//! as an invalid date (which for `Expires` would mean already expired).
//! What is not a date in one of the three forms stays invalid.
//!
//! The formats themselves are `httpdate`'s; this module only feeds it the
//! spellings it is strict about.

use std::time::SystemTime;

const SHORT_WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// An HTTP-date in any of its three formats, names in any case, its
/// weekday not checked against the date.
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    let canonical = canonical_case(text);
    httpdate::parse_http_date(text)
        .or_else(|_| httpdate::parse_http_date(&canonical))
        .ok()
        .or_else(|| with_the_right_weekday(&canonical))
}

/// The date, when its only fault is the weekday: the text with each
/// weekday name of its form in turn (one at most fits the date).
fn with_the_right_weekday(canonical: &str) -> Option<SystemTime> {
    let end = canonical
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(canonical.len());
    let (weekday, rest) = canonical.split_at(end);
    let names = if SHORT_WEEKDAYS.contains(&weekday) {
        &SHORT_WEEKDAYS
    } else if LONG_WEEKDAYS.contains(&weekday) {
        &LONG_WEEKDAYS
    } else {
        return None;
    };
    names
        .iter()
        .find_map(|name| httpdate::parse_http_date(&format!("{name}{rest}")).ok())
}

/// `sun, 06 NOV 1994 08:49:37 gmt` as `Sun, 06 Nov 1994 08:49:37 GMT`.
fn canonical_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            out.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            out.push(c);
            word_start = true;
        }
    }
    out.replace("Gmt", "GMT")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1994-11-06 08:49:37 UTC, a Sunday (RFC 9110 §5.6.7's example).
    fn example() -> SystemTime {
        httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap()
    }

    #[test]
    fn every_format_in_any_case() {
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN NOV  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(text), Some(example()), "{text}");
        }
    }

    #[test]
    fn a_wrong_weekday_is_read_as_the_date_it_names() {
        for text in [
            "Mon Nov  6 08:49:37 1994",
            "wed nov  6 08:49:37 1994",
            "Thu, 06 Nov 1994 08:49:37 GMT",
            "Friday, 06-Nov-94 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(text), Some(example()), "{text}");
        }
    }

    #[test]
    fn what_is_no_date_stays_invalid() {
        for text in [
            "Xyz Nov  6 08:49:37 1994",
            "Nov  6 08:49:37 1994",
            "Mon Nov 32 08:49:37 1994",
            "Mon, 06 Nov 1994 25:49:37 GMT",
            "Mo Nov  6 08:49:37 1994",
            "",
            "0",
        ] {
            assert_eq!(parse_http_date(text), None, "{text}");
        }
    }
}
