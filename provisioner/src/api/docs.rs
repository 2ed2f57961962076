//! `GET /docs`: the API reference for people, an HTML page rendered from
//! the OpenAPI document the service serves at `/v1/openapi.json` (the same
//! value, generated from the handlers' annotations, not a copy).
//!
//! Operations are grouped by tag, each with its method, path, summary,
//! description, parameters, request body and responses; the schemas
//! follow, with their properties. The page is self-contained: inline CSS,
//! no script, no external asset (its Content-Security-Policy forbids any
//! fetch), so it works with no network. Every text taken from the document
//! is HTML-escaped; backquoted spans in descriptions become `<code>`
//! after escaping.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::fmt::Write;
use std::sync::OnceLock;

/// The methods an OpenAPI path item may hold, in the order they are shown.
const METHODS: [&str; 8] = [
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// Allows the inline stylesheet and nothing else: no script, no fetch.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d232a;background:#fafbfc}
header{background:#1d3557;color:#fff;padding:1.2em 2em}
header h1{margin:0 0 .2em}
header a{color:#cfe3ff}
main{display:flex;gap:2em;padding:1em 2em}
nav{min-width:14em;position:sticky;top:0;align-self:flex-start;max-height:100vh;overflow:auto}
nav ul{list-style:none;padding-left:.8em;margin:.2em 0}
article{flex:1;min-width:0}
section.op{background:#fff;border:1px solid #d8dee4;border-radius:6px;padding:.6em 1em;margin:.8em 0}
.m{display:inline-block;min-width:4.2em;text-align:center;font-weight:700;color:#fff;border-radius:4px;padding:0 .4em;margin-right:.5em}
.get{background:#2a7ab0}.post{background:#2f9e44}.put,.patch{background:#c77c02}.delete{background:#c92a2a}
.head,.options,.trace{background:#666}
.path{font-family:ui-monospace,monospace;font-weight:600}
.id{color:#5c6670;font-family:ui-monospace,monospace;font-size:.9em;margin-left:.6em}
table{border-collapse:collapse;margin:.4em 0;width:100%}
th,td{border:1px solid #d8dee4;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f0f3f6}
code{background:#eef1f4;border-radius:3px;padding:0 .2em}
h4{margin:.6em 0 .2em}
section.schema{background:#fff;border:1px solid #d8dee4;border-radius:6px;padding:.4em 1em;margin:.8em 0}
";

/// The API reference as an HTML page, rendered from this document.
#[utoipa::path(get, path = "/docs", tag = "service", operation_id = "get_docs", security(()),
    responses((status = 200, body = String, content_type = "text/html", description = "this document as a page for people; no script, no external asset")))]
pub async fn docs() -> Response {
    static PAGE: OnceLock<String> = OnceLock::new();
    let page = PAGE.get_or_init(|| render(&super::handlers::document_json()));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page.as_str(),
    )
        .into_response()
}

/// `s` with the HTML metacharacters replaced by entities, safe in element
/// text and in quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A description as HTML: escaped, backquoted spans as `<code>`, blank
/// lines as paragraph breaks.
fn prose(s: &str) -> String {
    let parts: Vec<&str> = s.split('`').collect();
    let last = parts.len() - 1;
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i % 2 == 1 && i != last {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            // An unmatched final backquote stays as it is.
            if i % 2 == 1 {
                out.push('`');
            }
            out.push_str(&escape(part).replace("\n\n", "<br><br>"));
        }
    }
    out
}

/// An anchor id made of `[A-Za-z0-9_-]` only, so it needs no escaping.
fn anchor(prefix: &str, name: &str) -> String {
    let mut id = String::from(prefix);
    for c in name.chars() {
        id.push(if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '-'
        });
    }
    id
}

/// The schema name of a `#/components/schemas/<name>` reference.
fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")?
        .as_str()?
        .strip_prefix("#/components/schemas/")
}

/// A schema's type, as HTML: a link for a reference, and the parts of
/// arrays, maps, unions and enums.
fn type_html(s: &Value) -> String {
    if let Some(name) = ref_name(s) {
        return format!(
            "<a href=\"#{}\">{}</a>",
            anchor("schema-", name),
            escape(name)
        );
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        return format!("<code>{}</code>", escape(r));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = s.get(key).and_then(Value::as_array) {
            let sep = if key == "allOf" { " &amp; " } else { " | " };
            return list.iter().map(type_html).collect::<Vec<_>>().join(sep);
        }
    }
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", escape(&v.to_string())))
            .collect();
        return format!("one of {}", vals.join(", "));
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if types.is_empty() {
        return "any".to_string();
    }
    types
        .iter()
        .map(|t| match *t {
            "array" => format!(
                "array of {}",
                s.get("items").map_or_else(|| "any".to_string(), type_html)
            ),
            "object" => match s.get("additionalProperties") {
                Some(v) if v.is_object() => format!("map of {}", type_html(v)),
                _ => "object".to_string(),
            },
            t => match s.get("format").and_then(Value::as_str) {
                Some(f) => format!("{} ({})", escape(t), escape(f)),
                None => escape(t),
            },
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Follows a `#/components/...` reference within `doc`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) if r.starts_with("#/") => doc.pointer(&r[1..]).unwrap_or(v),
        _ => v,
    }
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Each content type of a request body or response with its schema.
fn content_html(out: &mut String, content: Option<&Map<String, Value>>) {
    let Some(content) = content else {
        return;
    };
    for (ctype, media) in content {
        let schema = media
            .get("schema")
            .map_or_else(|| "—".to_string(), type_html);
        let _ = write!(out, "<code>{}</code> {schema}<br>", escape(ctype));
    }
}

fn operation_html(doc: &Value, out: &mut String, path: &str, method: &str, op: &Value) {
    let id = text(op, "operationId").unwrap_or("");
    let _ = write!(
        out,
        "<section class=\"op\" id=\"{}\"><div><span class=\"m {method}\">{}</span>\
         <span class=\"path\">{}</span><span class=\"id\">{}</span></div>",
        anchor("op-", if id.is_empty() { path } else { id }),
        method.to_uppercase(),
        escape(path),
        escape(id),
    );
    if let Some(s) = text(op, "summary") {
        let _ = write!(out, "<p><strong>{}</strong></p>", prose(s));
    }
    if let Some(d) = text(op, "description") {
        let _ = write!(out, "<p>{}</p>", prose(d));
    }
    if op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
        })
    {
        out.push_str("<p><em>No token needed.</em></p>");
    }

    let params: Vec<&Value> = op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| resolve(doc, p))
        .collect();
    if !params.is_empty() {
        out.push_str(
            "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th>\
             <th>required</th><th>description</th></tr>",
        );
        for p in params {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(text(p, "name").unwrap_or("")),
                escape(text(p, "in").unwrap_or("")),
                p.get("schema").map_or_else(String::new, type_html),
                if p.get("required") == Some(&Value::Bool(true)) {
                    "yes"
                } else {
                    "no"
                },
                text(p, "description").map(prose).unwrap_or_default(),
            );
        }
        out.push_str("</table>");
    }

    if let Some(body) = op.get("requestBody").map(|b| resolve(doc, b)) {
        out.push_str("<h4>Request body</h4><p>");
        if let Some(d) = text(body, "description") {
            let _ = write!(out, "{}<br>", prose(d));
        }
        content_html(out, body.get("content").and_then(Value::as_object));
        out.push_str("</p>");
    }

    if let Some(responses) = op.get("responses").and_then(Value::as_object) {
        out.push_str(
            "<h4>Responses</h4><table><tr><th>status</th><th>description</th><th>body</th></tr>",
        );
        for (status, r) in responses {
            let r = resolve(doc, r);
            let mut body = String::new();
            content_html(&mut body, r.get("content").and_then(Value::as_object));
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{body}</td></tr>",
                escape(status),
                text(r, "description").map(prose).unwrap_or_default(),
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
}

fn schema_html(out: &mut String, name: &str, s: &Value) {
    let _ = write!(
        out,
        "<section class=\"schema\" id=\"{}\"><h3>{}</h3>",
        anchor("schema-", name),
        escape(name)
    );
    if let Some(d) = text(s, "description") {
        let _ = write!(out, "<p>{}</p>", prose(d));
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(
            "<table><tr><th>field</th><th>type</th><th>required</th><th>description</th></tr>",
        );
        for (field, p) in props {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(field),
                type_html(p),
                if required.contains(&field.as_str()) {
                    "yes"
                } else {
                    "no"
                },
                text(p, "description").map(prose).unwrap_or_default(),
            );
        }
        out.push_str("</table>");
    } else if let Some(variants) = s.get("oneOf").and_then(Value::as_array) {
        out.push_str("<p>One of:</p><ul>");
        for v in variants {
            out.push_str("<li>");
            if let Some(t) = text(v, "title") {
                let _ = write!(out, "<strong>{}</strong> ", escape(t));
            }
            out.push_str(&type_html(v));
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                let fields: Vec<String> = props
                    .iter()
                    .map(|(f, p)| format!("<code>{}</code>: {}", escape(f), type_html(p)))
                    .collect();
                let _ = write!(out, " {{ {} }}", fields.join(", "));
            }
            if let Some(d) = text(v, "description") {
                let _ = write!(out, " — {}", prose(d));
            }
            out.push_str("</li>");
        }
        out.push_str("</ul>");
    } else {
        let _ = write!(out, "<p>{}</p>", type_html(s));
    }
    out.push_str("</section>");
}

/// The whole page for an OpenAPI document.
pub fn render(doc: &Value) -> String {
    let info = &doc["info"];
    let title = text(info, "title").unwrap_or("API");
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} reference</title><style>{STYLE}</style></head><body>\
         <header><h1>{}</h1><div>version {} · OpenAPI {} · \
         <a href=\"/v1/openapi.json\">the document as JSON</a></div>",
        escape(title),
        escape(title),
        escape(text(info, "version").unwrap_or("")),
        escape(text(doc, "openapi").unwrap_or("")),
    );
    if let Some(d) = text(info, "description") {
        let _ = write!(out, "<p>{}</p>", prose(d));
    }
    out.push_str("</header><main>");

    // Operations by tag: the document's tags in order, then any tag only
    // operations name, then the untagged ones.
    let mut tags: Vec<(String, Option<&str>)> = doc
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| Some((text(t, "name")?.to_string(), text(t, "description"))))
        .collect();
    let mut ops: Vec<(&str, &str, &Value, String)> = Vec::new();
    for (path, item) in doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                let tag = op
                    .get("tags")
                    .and_then(|t| t.get(0))
                    .and_then(Value::as_str)
                    .unwrap_or("other")
                    .to_string();
                if !tags.iter().any(|(t, _)| *t == tag) {
                    tags.push((tag.clone(), None));
                }
                ops.push((path.as_str(), m, op, tag));
            }
        }
    }
    let schemas = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object);

    out.push_str("<nav><strong>Operations</strong><ul>");
    for (tag, _) in &tags {
        let _ = write!(
            out,
            "<li><a href=\"#{}\">{}</a><ul>",
            anchor("tag-", tag),
            escape(tag)
        );
        for (path, _, op, _) in ops.iter().filter(|o| o.3 == *tag) {
            let id = text(op, "operationId").unwrap_or(path);
            let _ = write!(
                out,
                "<li><a href=\"#{}\">{}</a></li>",
                anchor("op-", id),
                escape(id)
            );
        }
        out.push_str("</ul></li>");
    }
    out.push_str("</ul><strong><a href=\"#schemas\">Schemas</a></strong></nav><article>");

    for (tag, description) in &tags {
        let _ = write!(
            out,
            "<h2 id=\"{}\">{}</h2>",
            anchor("tag-", tag),
            escape(tag)
        );
        if let Some(d) = description {
            let _ = write!(out, "<p>{}</p>", prose(d));
        }
        for (path, method, op, _) in ops.iter().filter(|o| o.3 == *tag) {
            operation_html(doc, &mut out, path, method, op);
        }
    }

    out.push_str("<h2 id=\"schemas\">Schemas</h2>");
    for (name, s) in schemas.into_iter().flatten() {
        schema_html(&mut out, name, s);
    }
    out.push_str("</article></main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escape_replaces_every_metacharacter() {
        assert_eq!(
            escape(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(escape("plain text"), "plain text");
    }

    #[test]
    fn backquotes_become_code_after_escaping() {
        assert_eq!(
            prose("use `<b>` or `x`"),
            "use <code>&lt;b&gt;</code> or <code>x</code>"
        );
        // An unmatched backquote stays text.
        assert_eq!(prose("a ` b"), "a ` b");
    }

    /// Every place a document's text reaches the page, with markup in it:
    /// none of it comes out as markup.
    #[test]
    fn a_hostile_document_cannot_inject_markup() {
        let evil = r#"<script>alert(1)</script><img src="http://evil.example/x" onerror='y'>"#;
        let doc = json!({
            "openapi": evil,
            "info": {"title": evil, "version": evil, "description": evil},
            "tags": [{"name": evil, "description": evil}],
            "paths": {
                evil: {"get": {
                    "tags": [evil],
                    "operationId": evil,
                    "summary": evil,
                    "description": format!("`{evil}` {evil}"),
                    "parameters": [{"name": evil, "in": evil, "description": evil,
                                    "schema": {"type": evil, "format": evil, "enum": [evil]}}],
                    "requestBody": {"description": evil, "content": {
                        evil: {"schema": {"$ref": format!("#/components/schemas/{evil}")}}}},
                    "responses": {evil: {"description": evil, "content": {
                        evil: {"schema": {"type": "array", "items": {"$ref": evil}}}}}}
                }}
            },
            "components": {"schemas": {
                evil: {"description": evil, "required": [evil],
                       "properties": {evil: {"description": evil, "type": [evil, "null"]}}},
                "Union": {"oneOf": [{"title": evil, "description": evil,
                                     "properties": {evil: {"type": "string"}}}]}
            }}
        });
        let page = render(&doc);
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("evil.example/x\""), "{page}");
        assert!(!page.contains("onerror='"), "{page}");
        // The only tags are the renderer's own.
        let allowed = [
            "!DOCTYPE", "html", "head", "meta", "title", "style", "body", "header", "h1", "h2",
            "h3", "h4", "div", "p", "a", "main", "nav", "strong", "ul", "li", "article", "section",
            "span", "table", "tr", "th", "td", "code", "br", "em",
        ];
        for piece in page.split('<').skip(1) {
            let name: String = piece
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
                .collect();
            let name = if name == "!DOCTYPE" {
                name
            } else {
                name.to_lowercase()
            };
            assert!(
                allowed.contains(&name.as_str()),
                "unexpected <{name}: {piece:.80}"
            );
        }
    }

    /// The served document's page nests its elements properly: every
    /// element opened is closed, in order.
    #[test]
    fn the_served_documents_page_is_well_nested() {
        let page = render(&crate::api::handlers::document_json());
        let mut open: Vec<String> = Vec::new();
        for piece in page.split('<').skip(1) {
            let tag = &piece[..piece.find('>').expect("tag ends")];
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
                .collect();
            if ["!DOCTYPE", "meta", "br"].contains(&name.as_str()) {
                continue;
            }
            if closing {
                assert_eq!(open.pop().as_deref(), Some(name.as_str()), "at <{tag}>");
            } else {
                open.push(name);
            }
        }
        assert!(open.is_empty(), "left open: {open:?}");
        assert!(page.contains("id=\"op-create_cluster\""));
        assert!(page.contains("id=\"schema-ClusterView\""));
    }

    #[test]
    fn anchors_are_plain() {
        assert_eq!(anchor("op-", "list_clusters"), "op-list_clusters");
        assert_eq!(anchor("schema-", "a\"><b"), "schema-a---b");
    }
}
