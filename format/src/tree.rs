//! The subset of YAML that CDI spec files are written in, and JSON (which is YAML's
//! flow style on many lines), read into one small tree ([`Value`]) that `cdi.rs` walks.
//!
//! Why by hand, and why not serde: a YAML crate (`serde_yaml` with `unsafe-libyaml`)
//! would add well over 100 KiB to the static stub; reading the specs with serde derives
//! through `serde_json::Value` cost 78 KiB for all of CDI (the stub with and without
//! `cdi::inject`: 1,011,928 against 934,104 bytes), through JSON text and
//! `serde_json::from_slice` still 65 KiB (999,640). This reader and a walk over its tree
//! cost a fraction of that (the size is in the commit that made it).
//!
//! What it reads: block mappings and sequences (a sequence may sit at its key's
//! indentation, as `nvidia-ctk` writes them), `- key: value` items, plain, single- and
//! double-quoted scalars, one-line flow collections (`[a, "b"]`, `{k: v}`), comments,
//! `---`; and any JSON document. Every scalar is a string (`null` and `~` are null;
//! numbers and booleans stay text): CDI's fields that matter here are all strings.
//! Anything else (block scalars `|`/`>`, anchors, tags, multi-line plain scalars) is an
//! error naming its line.

/// A node: scalars are strings (or null).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

type Map = Vec<(String, Value)>;

impl Value {
    /// The value of `key`, when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A JSON document: one flow node, its line breaks read as spaces (a JSON string holds
/// none), so that an error still names its line.
pub fn parse_json(text: &str) -> Result<Value, String> {
    let flat: Vec<u8> = text.bytes().map(|b| if b.is_ascii_whitespace() { b' ' } else { b }).collect();
    let mut flow = Flow { s: &flat, at: 0, number: 0, original: Some(text.as_bytes()) };
    let v = flow.value()?;
    flow.space();
    if flow.at != flow.s.len() {
        return Err(flow.err("unexpected text after the document"));
    }
    Ok(v)
}

/// A YAML document, or `line N: what is wrong`.
pub fn parse(text: &str) -> Result<Value, String> {
    let lines = logical_lines(text)?;
    if lines.is_empty() {
        return Ok(Value::Null);
    }
    let mut p = Parser { lines, at: 0 };
    let indent = p.lines[0].indent;
    let v = p.node(indent)?;
    match p.lines.get(p.at) {
        Some(l) => Err(format!("line {}: unexpected indentation", l.number)),
        None => Ok(v),
    }
}

struct Line {
    number: usize,
    indent: usize,
    text: String,
}

/// The lines that carry content, without comments, with their indentation.
fn logical_lines(text: &str) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        if raw[..raw.len() - raw.trim_start().len()].contains('\t') {
            return Err(format!("line {number}: tabs are not allowed for indentation"));
        }
        let content = strip_comment(raw);
        let trimmed = content.trim_end();
        let indent = trimmed.len() - trimmed.trim_start().len();
        let body = trimmed.trim_start();
        if body.is_empty() || body == "---" || body == "..." || body.starts_with('%') {
            continue;
        }
        out.push(Line { number, indent, text: body.to_string() });
    }
    Ok(out)
}

/// The line up to a `#` that starts a comment (at the start or after a space, outside
/// quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

struct Parser {
    lines: Vec<Line>,
    at: usize,
}

impl Parser {
    /// The block node whose lines start at indentation `indent`.
    fn node(&mut self, indent: usize) -> Result<Value, String> {
        let line = &self.lines[self.at];
        if is_item(&line.text) {
            self.sequence(indent)
        } else if split_key(&line.text).is_some() {
            self.mapping(indent)
        } else {
            let v = scalar_or_flow(&line.text, line.number)?;
            self.at += 1;
            Ok(v)
        }
    }

    fn sequence(&mut self, indent: usize) -> Result<Value, String> {
        let mut items = Vec::new();
        while let Some(line) = self.lines.get(self.at) {
            if line.indent != indent || !is_item(&line.text) {
                break;
            }
            let number = line.number;
            let rest = line.text[1..].trim_start().to_string();
            if rest.is_empty() {
                self.at += 1;
                items.push(self.nested(indent, number)?);
            } else {
                // `- key: value` opens a mapping whose keys sit where `key` does.
                let inner = indent + (line.text.len() - rest.len());
                self.lines[self.at] = Line { number, indent: inner, text: rest };
                items.push(self.node(inner)?);
            }
        }
        Ok(Value::Array(items))
    }

    fn mapping(&mut self, indent: usize) -> Result<Value, String> {
        let mut map = Map::new();
        while let Some(line) = self.lines.get(self.at) {
            if line.indent != indent || is_item(&line.text) {
                break;
            }
            let number = line.number;
            let Some((key, value)) = split_key(&line.text) else {
                return Err(format!("line {number}: expected `key: value`"));
            };
            let key = match scalar_or_flow(&key, number)? {
                Value::String(s) => s,
                _ => return Err(format!("line {number}: a key must be a string")),
            };
            self.at += 1;
            let value = if value.is_empty() {
                // A sequence may sit at its key's own indentation.
                match self.lines.get(self.at) {
                    Some(next) if next.indent == indent && is_item(&next.text) => self.sequence(indent)?,
                    _ => self.nested(indent, number)?,
                }
            } else {
                scalar_or_flow(&value, number)?
            };
            if map.iter().any(|(k, _)| *k == key) {
                return Err(format!("line {number}: `{key}` appears twice"));
            }
            map.push((key, value));
        }
        Ok(Value::Object(map))
    }

    /// What follows a `key:` or `-` with nothing after it: a deeper block, or null.
    fn nested(&mut self, indent: usize, _number: usize) -> Result<Value, String> {
        match self.lines.get(self.at) {
            Some(next) if next.indent > indent => {
                let deeper = next.indent;
                self.node(deeper)
            }
            _ => Ok(Value::Null),
        }
    }
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: value` (or `key:`), with the key possibly quoted; None for a plain scalar.
fn split_key(text: &str) -> Option<(String, String)> {
    let end_of_key = if text.starts_with(['"', '\'']) {
        let q = text.chars().next()?;
        let close = text[1..].find(q)? + 1;
        close + 1
    } else if text.starts_with(['[', '{']) {
        return None;
    } else {
        text.find(": ").or_else(|| text.ends_with(':').then(|| text.len() - 1))?
    };
    let rest = &text[end_of_key..];
    let value = rest.strip_prefix(':')?;
    if !(value.is_empty() || value.starts_with(' ')) {
        return None;
    }
    Some((text[..end_of_key].trim().to_string(), value.trim().to_string()))
}

/// A scalar or a one-line flow collection.
fn scalar_or_flow(text: &str, number: usize) -> Result<Value, String> {
    let mut flow = Flow { s: text.as_bytes(), at: 0, number, original: None };
    let v = flow.value()?;
    flow.space();
    if flow.at != flow.s.len() {
        return Err(format!("line {number}: unexpected text after the value: `{}`", &text[flow.at..]));
    }
    Ok(v)
}

struct Flow<'a> {
    s: &'a [u8],
    at: usize,
    /// The line of a YAML value; for JSON, 0 and the `original` text to count lines in.
    number: usize,
    original: Option<&'a [u8]>,
}

impl Flow<'_> {
    fn err(&self, what: &str) -> String {
        let line = match self.original {
            Some(text) => 1 + text[..self.at.min(text.len())].iter().filter(|&&b| b == b'\n').count(),
            None => self.number,
        };
        format!("line {line}: {what}")
    }

    fn space(&mut self) {
        while self.s.get(self.at) == Some(&b' ') {
            self.at += 1;
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        self.space();
        match self.s.get(self.at) {
            Some(b'[') => self.collection(b']').map(Value::Array),
            Some(b'{') => {
                let mut map = Map::new();
                for pair in self.collection(b'}')? {
                    let Value::Array(mut kv) = pair else { unreachable!() };
                    let v = kv.pop().unwrap_or(Value::Null);
                    let Some(Value::String(k)) = kv.pop() else { return Err(self.err("a key must be a string")) };
                    map.push((k, v));
                }
                Ok(Value::Object(map))
            }
            Some(b'"') => self.double_quoted().map(Value::String),
            Some(b'\'') => self.single_quoted().map(Value::String),
            Some(b'&' | b'*' | b'!' | b'|' | b'>') => {
                Err(self.err("anchors, tags and block scalars are not supported"))
            }
            _ => Ok(plain(self.plain_text())),
        }
    }

    /// The items of `[...]`, or the `[key, value]` pairs of `{...}`.
    fn collection(&mut self, close: u8) -> Result<Vec<Value>, String> {
        self.at += 1;
        let mut items = Vec::new();
        loop {
            self.space();
            if self.s.get(self.at) == Some(&close) {
                self.at += 1;
                return Ok(items);
            }
            let v = self.value()?;
            self.space();
            if close == b'}' {
                if self.s.get(self.at) != Some(&b':') {
                    return Err(self.err("expected `:` in a flow mapping"));
                }
                self.at += 1;
                let value = self.value()?;
                items.push(Value::Array(vec![v, value]));
            } else {
                items.push(v);
            }
            self.space();
            match self.s.get(self.at) {
                Some(b',') => self.at += 1,
                Some(c) if *c == close => {}
                _ => return Err(self.err("expected `,` or the end of a flow collection")),
            }
        }
    }

    /// A plain scalar: up to the end, or (inside a flow) up to `,`, `]`, `}` or `: `.
    fn plain_text(&mut self) -> String {
        let start = self.at;
        while let Some(&c) = self.s.get(self.at) {
            let ends_key = c == b':' && matches!(self.s.get(self.at + 1), None | Some(b' '));
            if matches!(c, b',' | b']' | b'}') || ends_key {
                break;
            }
            self.at += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.at]).trim().to_string()
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        let mut out = Vec::new();
        self.at += 1;
        loop {
            match self.s.get(self.at) {
                None => return Err(self.err("unterminated '...' string")),
                Some(b'\'') if self.s.get(self.at + 1) == Some(&b'\'') => {
                    out.push(b'\'');
                    self.at += 2;
                }
                Some(b'\'') => {
                    self.at += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(&c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        self.at += 1;
        let text = std::str::from_utf8(self.s).map_err(|_| self.err("not UTF-8"))?;
        let mut chars = text[self.at..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Ok(out);
                }
                '\\' => {
                    let escaped = match chars.next().map(|(_, e)| e) {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('b') => '\u{8}',
                        Some('f') => '\u{c}',
                        Some('0') => '\0',
                        Some(e @ ('"' | '\\' | '/' | ' ')) => e,
                        Some('u') => {
                            let hex: String = (0..4).filter_map(|_| chars.next().map(|(_, h)| h)).collect();
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.err("bad \\u escape"))?
                        }
                        _ => return Err(self.err("unknown escape in a \"...\" string")),
                    };
                    out.push(escaped);
                }
                c => out.push(c),
            }
        }
        Err(self.err("unterminated \"...\" string"))
    }
}

fn plain(s: String) -> Value {
    match s.as_str() {
        "null" | "~" | "" => Value::Null,
        _ => Value::String(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Our tree as serde_json's, to compare with `json!`.
    fn as_json(v: Value) -> serde_json::Value {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::String(s) => s.into(),
            Value::Array(a) => a.into_iter().map(as_json).collect(),
            Value::Object(o) => serde_json::Value::Object(o.into_iter().map(|(k, v)| (k, as_json(v))).collect()),
        }
    }

    fn parse(text: &str) -> Result<serde_json::Value, String> {
        super::parse(text).map(as_json)
    }

    #[test]
    fn json_is_read_too() {
        let v = parse_json("{\"a\": [1, true, null, \"x\\ty\"],\n \"b\": {}}").map(as_json).unwrap();
        assert_eq!(v, json!({"a": ["1", "true", null, "x\ty"], "b": {}}));
        let err = parse_json("{\"a\":\n [1,\n 2").unwrap_err();
        assert!(err.starts_with("line 3: expected `,`"), "{err}");
    }

    #[test]
    fn what_nvidia_ctk_writes() {
        let text = r#"---
cdiVersion: 0.5.0   # a comment
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  hooks:
  - args:
    - nvidia-ctk
    - hook
    - create-symlinks
    - --link
    - libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so
    hookName: createContainer
    path: /usr/bin/nvidia-ctk
  mounts:
  - containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05
    hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05
    options: [ro, nosuid, "nodev", 'bind']
devices:
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
  name: "0"
- name: 'it''s #1'
  containerEdits: {}
kind: nvidia.com/gpu
"#;
        let v = parse(text).unwrap();
        assert_eq!(
            v,
            json!({
                "cdiVersion": "0.5.0",
                "containerEdits": {
                    "env": ["NVIDIA_VISIBLE_DEVICES=void"],
                    "hooks": [{
                        "args": ["nvidia-ctk", "hook", "create-symlinks", "--link",
                                 "libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so"],
                        "hookName": "createContainer",
                        "path": "/usr/bin/nvidia-ctk"
                    }],
                    "mounts": [{
                        "containerPath": "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05",
                        "hostPath": "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05",
                        "options": ["ro", "nosuid", "nodev", "bind"]
                    }]
                },
                "devices": [
                    {"containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}, "name": "0"},
                    {"name": "it's #1", "containerEdits": {}}
                ],
                "kind": "nvidia.com/gpu"
            })
        );
    }

    #[test]
    fn nested_sequences_and_nulls() {
        let v = parse("a:\n  -\n    - x\n    - \"y\\tz\"\n  - []\nb:\nc: ~\n").unwrap();
        assert_eq!(v, json!({"a": [["x", "y\tz"], []], "b": null, "c": null}));
    }

    #[test]
    fn mistakes_name_their_line() {
        for (text, needle) in [
            ("a: 1\n  b: 2\n", "line 2"),
            ("a: |\n  text\n", "line 1: anchors, tags and block scalars"),
            ("a: [1, 2\n", "line 1: expected `,`"),
            ("a: \"open\n", "line 1: unterminated"),
            ("a: 1\na: 2\n", "line 2: `a` appears twice"),
            ("- a\nb: 1\n", "line 2"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
