//! The web console at `GET /`: server-rendered HTML, no build step.
//!
//! It lists the services with their up/down state and enabled status, each
//! topic's methods with their arguments (from `describe`), and a form that
//! calls or casts a method through the gateway and shows the result. The
//! form can be pre-filled from the URL (`?topic=&method=&args=&server=`),
//! and `&run=1` submits it on load, so a call can be shared as a link.

use std::collections::BTreeSet;

use axum::{extract::State, response::Html};
use nova_rpc::RequestContext;
use serde_json::Value;

use super::Gateway;

/// Escape text for HTML.
pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.up{color:#fff;background:#2a7d2a;padding:0 .4em;border-radius:3px}.down{color:#fff;background:#b32;padding:0 .4em;border-radius:3px}
.disabled{color:#b32}code{background:#f3f3f3;padding:0 .2em}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}
label{display:inline-block;min-width:7em}input,textarea,select{font-family:monospace;margin:.2em 0}";

const SCRIPT: &str = r#"
function useMethod(topic, method, ns, version) {
  const f = document.getElementById('call');
  f.topic.value = topic; f.method.value = method; f.namespace.value = ns; f.version.value = version;
  f.args.focus();
}
async function submitCall(ev) {
  if (ev) ev.preventDefault();
  const f = document.getElementById('call');
  const out = document.getElementById('result');
  const parts = ['', 'v1', f.mode.value, encodeURIComponent(f.topic.value)];
  if (f.server.value) parts.push(encodeURIComponent(f.server.value));
  parts.push(encodeURIComponent(f.method.value));
  const q = new URLSearchParams();
  if (f.namespace.value) q.set('namespace', f.namespace.value);
  if (f.version.value) q.set('version', f.version.value);
  if (f.timeout.value) q.set('timeout', f.timeout.value);
  out.textContent = 'calling…';
  try {
    const r = await fetch(parts.join('/') + '?' + q.toString(), {method: 'POST', headers: {'Content-Type': 'application/json'}, body: f.args.value || '{}'});
    const text = await r.text();
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) {}
    const rid = r.headers.get('X-OpenStack-Request-ID') || '-';
    out.textContent = 'HTTP ' + r.status + ' (request ' + rid + ')\n' + shown;
    const link = document.getElementById('trace-link');
    link.href = '/traces/' + encodeURIComponent(rid); link.textContent = 'trace of ' + rid;
    out.dataset.status = r.status;
  } catch (e) {
    out.textContent = 'failed: ' + e;
  }
  return false;
}
window.addEventListener('DOMContentLoaded', () => {
  const p = new URLSearchParams(location.search);
  const f = document.getElementById('call');
  for (const k of ['topic', 'server', 'method', 'namespace', 'version', 'args', 'mode', 'timeout']) {
    if (p.has(k)) f[k].value = p.get(k);
  }
  f.addEventListener('submit', submitCall);
  if (p.get('run') === '1') submitCall();
});
"#;

/// Render the console.
pub(super) async fn page(State(gw): State<Gateway>) -> Html<String> {
    let mut html = format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>nova-rs console</title><style>{STYLE}</style></head><body><h1>nova-rs console</h1>");
    html.push_str("<h2>Services</h2>");
    let services = match gw.service_list().await {
        Ok(s) => s,
        Err(e) => {
            html.push_str(&format!("<p class=\"disabled\">cannot read services: {}</p>", esc(&e.message)));
            Vec::new()
        }
    };
    html.push_str("<table id=\"services\"><tr><th>Host</th><th>Binary</th><th>Topic</th><th>State</th><th>Status</th><th>Reports</th><th>Updated</th></tr>");
    let mut topics = BTreeSet::new();
    for s in &services {
        let state = str_of(s, "state");
        if state == "up" {
            topics.insert(str_of(s, "topic").to_owned());
        }
        let status = str_of(s, "status");
        let reason =
            s.get("disabled_reason").and_then(Value::as_str).map(|r| format!(" ({})", esc(r))).unwrap_or_default();
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><span class=\"{state}\">{state}</span></td><td class=\"{status}\">{status}{reason}</td><td>{}</td><td>{}</td></tr>",
            esc(str_of(s, "host")),
            esc(str_of(s, "binary")),
            esc(str_of(s, "topic")),
            s.get("report_count").and_then(Value::as_i64).unwrap_or(0),
            esc(str_of(s, "updated_at")),
        ));
    }
    html.push_str("</table><h2>Methods</h2>");
    let ctx = RequestContext::new();
    for topic in &topics {
        html.push_str(&format!("<h3 id=\"topic-{0}\">{0}</h3>", esc(topic)));
        let description = match gw.describe(&ctx, topic).await {
            Ok(d) => d,
            Err(e) => {
                html.push_str(&format!("<p class=\"disabled\">describe failed: {}</p>", esc(&e.to_string())));
                continue;
            }
        };
        html.push_str("<table><tr><th>Namespace</th><th>Version</th><th>Method</th><th>Arguments</th><th></th></tr>");
        for ep in description["endpoints"].as_array().into_iter().flatten() {
            let ns = str_of(ep, "namespace");
            let version = str_of(ep, "version");
            for m in ep["methods"].as_array().into_iter().flatten() {
                let name = str_of(m, "name");
                let args: Vec<String> = m["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| format!("<code>{}: {}</code>", esc(str_of(a, "name")), esc(str_of(a, "type"))))
                    .collect();
                html.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td><button type=\"button\" onclick=\"useMethod('{}','{}','{}','{}')\">use</button></td></tr>",
                    esc(if ns.is_empty() { "(default)" } else { ns }),
                    esc(version),
                    esc(str_of(m, "doc")),
                    esc(name),
                    args.join(" "),
                    esc(topic),
                    esc(name),
                    esc(ns),
                    esc(version),
                ));
            }
        }
        html.push_str("</table>");
    }
    html.push_str(
        "<h2>Call a method</h2><form id=\"call\">\
         <label>mode</label><select name=\"mode\"><option value=\"call\">call</option><option value=\"cast\">cast</option></select><br>\
         <label>topic</label><input name=\"topic\" required><br>\
         <label>server</label><input name=\"server\" placeholder=\"(any)\"><br>\
         <label>method</label><input name=\"method\" required><br>\
         <label>namespace</label><input name=\"namespace\"><br>\
         <label>version</label><input name=\"version\"><br>\
         <label>timeout (s)</label><input name=\"timeout\" placeholder=\"60\"><br>\
         <label>args (JSON)</label><br><textarea name=\"args\" rows=\"5\" cols=\"80\">{}</textarea><br>\
         <button type=\"submit\" id=\"submit\">Send</button></form><pre id=\"result\"></pre><p><a id=\"trace-link\"></a></p>\
         <h2>Find a trace</h2><form onsubmit=\"location.href='/traces/'+encodeURIComponent(this.rid.value);return false\">\
         <input name=\"rid\" size=\"45\" placeholder=\"req-…\"> <button type=\"submit\">Show</button></form>",
    );
    html.push_str(&format!("<script>{SCRIPT}</script></body></html>"));
    Html(html)
}
