//! JSON in a canonical form, for keying a request by the JSON body it
//! carries (`body_key: json` on a path rule): the same value, whatever the
//! order of its objects' members or the whitespace between tokens, has one
//! form. In the spirit of RFC 8785 (JCS): members sorted by key, no
//! insignificant whitespace, strings escaped one way; numbers are written
//! as parsed (so `1` and `1.0` stay apart, a conservative choice: two
//! requests that may differ are never keyed as one).

use serde_json::Value;

/// The canonical form of `body`, or None when it is not JSON.
pub fn canonical(body: &[u8]) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write(&value, &mut out);
    Some(out)
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, member)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write(member, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        // null, booleans and numbers have one compact form as serde_json writes them.
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json escapes a string one way whatever its source spelling.
    out.extend_from_slice(Value::String(s.to_owned()).to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(text: &str) -> String {
        String::from_utf8(canonical(text.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn order_and_whitespace_do_not_matter_values_do() {
        assert_eq!(
            form(r#"{"b": [1, {"y":2,"x":1}], "a":"\u0041"}"#),
            r#"{"a":"A","b":[1,{"x":1,"y":2}]}"#
        );
        assert_eq!(form(" {\n\"q\" : \"tea\" } "), form(r#"{"q":"tea"}"#));
        assert_ne!(form(r#"{"q":"tea"}"#), form(r#"{"q":"coffee"}"#));
        assert_ne!(form("[1,2]"), form("[2,1]"), "arrays keep their order");
        assert_eq!(canonical(b"not json"), None);
    }
}
