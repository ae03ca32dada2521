//! The web console at `GET /`: server-rendered with maud (which escapes
//! every value for its HTML context), no build step.
//!
//! It lists the services with their up/down state and enabled status
//! (refreshed every 5 s), per-method rate and latency charts (from
//! [`super::history`]; each with time and value axes, units and a legend),
//! each work queue's backlog, work in flight, workers and consumers over
//! time (polled from `/v1/work` every 2 s while the page is open), each topic's methods with their docs and arguments
//! (from `describe`), and a form that calls or casts a method through the
//! gateway and shows the result; resources link their own pages (`/tasks`). The form can be pre-filled from the URL
//! (`?topic=&method=&args=&server=`) but never sends anything by itself.
//!
//! Values reach the script only through `data-*` attributes, the script and
//! style are files of their own (`/console.js`, `/console.css`), and every
//! page is sent with a Content-Security-Policy that runs no inline script.
//! Under `auth_strategy = token` the console asks for a token once: its
//! script posts it to `/login`, which answers with an `HttpOnly;
//! SameSite=Strict` cookie for the pages (`Secure` behind TLS), and keeps
//! it for the session to send as `X-Auth-Token` to the API. The token is
//! never put in a URL (the form posts, with or without the script), and
//! the console's own files need no token.

use std::collections::BTreeSet;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Extension,
};
use maud::{html, Markup, DOCTYPE};
use nova_rpc::RequestContext;
use serde_json::Value;

use super::{Caller, Gateway};

/// What every page may load and run: its own files, nothing inline but styles.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                              connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
                              frame-ancestors 'none'";

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A whole page: `body` inside the console's frame, with the security
/// headers. Resources render their pages with it.
pub fn document(title: &str, body: Markup) -> Response {
    let page = html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                title { (title) }
                link rel="stylesheet" href="/console.css";
                script src="/console.js" defer {}
            }
            body { (body) }
        }
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        page.into_string(),
    )
        .into_response()
}

/// `POST /login` `{"token"}`: 204 with the pages' cookie for a known
/// token, 401 otherwise.
pub(super) async fn sign_in(
    State(gw): State<Gateway>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    #[derive(serde::Deserialize)]
    struct SignIn {
        token: String,
    }
    let token = match serde_json::from_slice::<SignIn>(&body) {
        Ok(s) => s.token,
        Err(e) => {
            return super::ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", format!("the body: {e}"))
                .into_response()
        }
    };
    if !gw.auth.knows(&token) {
        return super::ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "not a token of this gateway")
            .into_response();
    }
    // Behind a TLS proxy the cookie goes over TLS only.
    let tls = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let value = percent_encoding::utf8_percent_encode(&token, percent_encoding::NON_ALPHANUMERIC);
    let cookie = format!("nova_token={value}; Path=/; HttpOnly; SameSite=Strict{}", if tls { "; Secure" } else { "" });
    let mut answer = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&cookie) {
        answer.headers_mut().insert(header::SET_COOKIE, v);
    }
    answer
}

/// The page a browser without a valid token gets (401).
pub(super) fn login() -> Response {
    let mut page = document(
        "nova-rs console: sign in",
        html! {
            h1 { "nova-rs console" }
            p { "This gateway needs a token." }
            form #login method="post" action="/login" {
                label { "token" } input name="token" type="password" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
        },
    );
    *page.status_mut() = StatusCode::UNAUTHORIZED;
    page
}

fn services_table(services: &[Value]) -> Markup {
    html! {
        table #services {
            tr { th { "Host" } th { "Binary" } th { "Topic" } th { "State" } th { "Status" } th { "Reports" } th { "Updated" } }
            @for s in services {
                @let state = if str_of(s, "state") == "up" { "up" } else { "down" };
                @let status = if str_of(s, "status") == "disabled" { "disabled" } else { "enabled" };
                tr {
                    td { (str_of(s, "host")) }
                    td { (str_of(s, "binary")) }
                    td { (str_of(s, "topic")) }
                    td { span class=(state) { (state) } }
                    td class=(status) {
                        (status)
                        @if let Some(reason) = s.get("disabled_reason").and_then(Value::as_str) { " (" (reason) ")" }
                    }
                    td { (s.get("report_count").and_then(Value::as_i64).unwrap_or(0)) }
                    td { (str_of(s, "updated_at")) }
                }
            }
        }
    }
}

fn methods_table(topic: &str, description: &Value) -> Markup {
    html! {
        table.methods {
            tr { th { "Namespace" } th { "Version" } th { "Method" } th { "Arguments" } th { "Doc" } th {} }
            @for ep in description["endpoints"].as_array().into_iter().flatten() {
                @let ns = str_of(ep, "namespace");
                @let version = str_of(ep, "version");
                @for m in ep["methods"].as_array().into_iter().flatten() {
                    @let name = str_of(m, "name");
                    tr {
                        td { (if ns.is_empty() { "(default)" } else { ns }) }
                        td { (version) }
                        td.method {
                            (name)
                            @if m["cast"] == true { " " span.cast title="the typed client casts it" { "(cast)" } }
                            @if let Some(since) = m["since"].as_str() { " " span.since title="the API version that added it" { "since " (since) } }
                        }
                        td {
                            @for a in m["args"].as_array().into_iter().flatten() {
                                code { (str_of(a, "name")) ": " (str_of(a, "type")) } " "
                            }
                        }
                        td.doc { (str_of(m, "doc")) }
                        td {
                            button.use type="button" data-topic=(topic) data-method=(name) data-namespace=(ns)
                                data-version=(version) { "use" }
                        }
                    }
                }
            }
        }
    }
}

fn call_form() -> Markup {
    html! {
        h2 { "Call a method" }
        form #call {
            label { "mode" } select name="mode" { option value="call" { "call" } option value="cast" { "cast" } } br;
            label { "topic" } input name="topic" required; br;
            label { "server" } input name="server" placeholder="(any)"; br;
            label { "method" } input name="method" required; br;
            label { "namespace" } input name="namespace"; br;
            label { "version" } input name="version"; br;
            label { "timeout (s)" } input name="timeout" placeholder="60"; br;
            label { "args (JSON)" } br;
            textarea name="args" rows="5" cols="80" { "{}" } br;
            button #submit type="submit" { "Send" }
        }
        pre #result {}
        p { a #trace-link {} }
        h2 { "Find a trace" }
        form #find-trace {
            input name="rid" size="45" placeholder="req-…";
            " "
            button type="submit" { "Show" }
        }
    }
}

/// Render the console.
pub(super) async fn page(State(gw): State<Gateway>, Extension(caller): Extension<Caller>) -> Response {
    if let Err(e) = gw.authorize("api:services", &caller) {
        return e.into_response();
    }
    let (services, trouble) = match gw.service_list().await {
        Ok(s) => (s, None),
        Err(e) => (Vec::new(), Some(format!("cannot read services: {}", e.message))),
    };
    let topics: BTreeSet<&str> =
        services.iter().filter(|s| str_of(s, "state") == "up").map(|s| str_of(s, "topic")).collect();
    let ctx = RequestContext::new();
    let mut methods = Vec::new();
    for topic in topics {
        methods.push((topic, gw.describe(&ctx, topic).await));
    }
    document(
        "nova-rs console",
        html! {
            h1 { "nova-rs console" }
            p { a href="/events" { "events" } @for (path, label) in gw.links.iter() { " · " a href=(path) { (label) } } }
            h2 { "Services" }
            @if let Some(t) = trouble { p.disabled { (t) } }
            p.note { span #services-refreshed { "refreshed every 5 s" } }
            (services_table(&services))
            h2 { "Work queues" }
            p.note { "Each work queue since this page opened, sampled every 2 s: tasks waiting (backlog) and running (busy slots of its workers, as they report them), and its workers and consumers. This is what the autoscaler scales on: it keeps ceil((backlog + in flight) / target_per_worker) workers." }
            div #work {}
            h2 { "Rate and latency" }
            p.note { "Per method, calls per second (above) and p50 / p99 latency in milliseconds (below) over the last five minutes, from this process's metrics, sampled every 2 s." }
            div #charts {}
            h2 { "Methods" }
            @for (topic, description) in &methods {
                h3 id=(format!("topic-{topic}")) { (topic) }
                @match description {
                    Ok(d) => (methods_table(topic, d)),
                    Err(e) => p.disabled { "describe failed: " (e.to_string()) },
                }
            }
            (call_form())
        },
    )
}

/// `GET /console.js`.
pub(super) async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

/// `GET /console.css`.
pub(super) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.up{color:#fff;background:#2a7d2a;padding:0 .4em;border-radius:3px}.down{color:#fff;background:#b32;padding:0 .4em;border-radius:3px}
.disabled,.err{color:#b32}code{background:#f3f3f3;padding:0 .2em}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}
td.doc{color:#555;max-width:30em;white-space:normal}
label{display:inline-block;min-width:7em}input,textarea,select{font-family:monospace;margin:.2em 0}
#timeline{width:100%}#timeline td{padding:.2em .5em;border:0;border-bottom:1px solid #eee;white-space:nowrap}
.bar{position:relative;height:1em;background:#f3f3f3;min-width:30em}.bar span{position:absolute;height:100%;background:#3a7bd5}
.err span{background:#b32}
.note{color:#666;font-size:.9em}.chart{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
.chart svg{border:1px solid #ddd;background:#fcfcfc}.chart .rate{stroke:#3a7bd5}.chart .p50{stroke:#2a7d2a}.chart .p99{stroke:#b32}
.chart .axis{stroke:#999;stroke-width:1}.chart .tick,.chart .unit{fill:#555}.legend{font-size:.85em;color:#444}
.legend .item{margin-right:1em}.legend .key{display:inline-block;width:1.5em;height:.25em;vertical-align:middle;margin-right:.3em}
.key.rate{background:#3a7bd5}.key.p50{background:#2a7d2a}.key.p99{background:#b32}
.chart .consumers{stroke:#865;stroke-dasharray:4 3}.key.consumers{background:#865}
.queued{color:#865}.running{color:#3a7bd5}.succeeded{color:#2a7d2a}.failed,.killed{color:#b32}
.error,.critical{color:#b32}.warn{color:#b60}.info,.audit,.sample{color:#3a7bd5}.debug{color:#666}
#events code{display:inline-block;max-width:50em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}";

const SCRIPT: &str = r#"'use strict';
function token() { return sessionStorage.getItem('nova_token') || ''; }
function useMethod(b) {
  const f = document.getElementById('call');
  f.topic.value = b.dataset.topic; f.method.value = b.dataset.method;
  f.namespace.value = b.dataset.namespace; f.version.value = b.dataset.version;
  f.args.focus();
}
async function submitCall(ev) {
  ev.preventDefault();
  const f = document.getElementById('call');
  const out = document.getElementById('result');
  const parts = ['', 'v1', f.mode.value, encodeURIComponent(f.topic.value)];
  if (f.server.value) parts.push(encodeURIComponent(f.server.value));
  parts.push(encodeURIComponent(f.method.value));
  const q = new URLSearchParams();
  if (f.namespace.value) q.set('namespace', f.namespace.value);
  if (f.version.value) q.set('version', f.version.value);
  if (f.timeout.value) q.set('timeout', f.timeout.value);
  const headers = {'Content-Type': 'application/json'};
  if (token()) headers['X-Auth-Token'] = token();
  out.textContent = 'calling…';
  try {
    const r = await fetch(parts.join('/') + '?' + q.toString(), {method: 'POST', headers, body: f.args.value || '{}'});
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
}
function authHeaders() { return token() ? {'X-Auth-Token': token()} : {}; }
function cell(text, cls) {
  const td = document.createElement('td');
  if (cls) { const s = document.createElement('span'); s.className = cls; s.textContent = text; td.appendChild(s); }
  else td.textContent = text;
  return td;
}
async function refreshServices() {
  const table = document.getElementById('services');
  if (!table) return;
  try {
    const r = await fetch('/v1/services', {headers: authHeaders()});
    if (!r.ok) return;
    const services = await r.json();
    for (const row of [...table.querySelectorAll('tr')].slice(1)) row.remove();
    for (const s of services) {
      const tr = document.createElement('tr');
      const state = s.state === 'up' ? 'up' : 'down';
      const status = s.status === 'disabled' ? 'disabled' : 'enabled';
      tr.append(cell(s.host), cell(s.binary), cell(s.topic), cell(state, state), cell(status),
                cell(String(s.report_count || 0)), cell(s.updated_at || ''));
      tr.children[4].className = status;
      table.appendChild(tr);
    }
    table.dataset.refreshed = String(Date.now());
  } catch (e) {}
}
const SVG = 'http://www.w3.org/2000/svg';
function line(svg, points, cls) {
  if (points.length < 2) return;
  const p = document.createElementNS(SVG, 'polyline');
  p.setAttribute('points', points.map(([x, y]) => x.toFixed(1) + ',' + y.toFixed(1)).join(' '));
  p.setAttribute('class', cls); p.setAttribute('fill', 'none'); p.setAttribute('stroke-width', '2');
  svg.appendChild(p);
}
function label(svg, x, y, text, anchor) {
  const t = document.createElementNS(SVG, 'text');
  t.setAttribute('x', x); t.setAttribute('y', y); t.setAttribute('font-size', '11');
  if (anchor) t.setAttribute('text-anchor', anchor);
  t.textContent = text;
  svg.appendChild(t);
  return t;
}
function rule(svg, x1, y1, x2, y2) {
  const l = document.createElementNS(SVG, 'line');
  l.setAttribute('x1', x1); l.setAttribute('y1', y1); l.setAttribute('x2', x2); l.setAttribute('y2', y2);
  l.setAttribute('class', 'axis');
  svg.appendChild(l);
}
function nice(v) { return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2); }
// One panel: a value axis (0, half, max, with its unit) and a time axis
// (seconds before now), from `top` down `height` pixels.
function panel(svg, top, height, max, unit, t0, t1, x, right, left) {
  const bottom = top + height;
  rule(svg, left, top, left, bottom);
  rule(svg, left, bottom, right, bottom);
  for (const f of [0, 0.5, 1]) {
    const y = bottom - height * f;
    rule(svg, left - 3, y, left, y);
    label(svg, left - 5, y + 4, nice(max * f), 'end').setAttribute('class', 'tick');
  }
  label(svg, left + 4, top - 4, unit).setAttribute('class', 'unit');
  const span = t1 - t0;
  for (const f of [0, 0.5, 1]) {
    const t = t0 + span * f, ago = Math.round(t1 - t);
    label(svg, x(t), bottom + 13, ago === 0 ? 'now' : '-' + ago + ' s', 'middle').setAttribute('class', 'tick');
  }
  return (v) => bottom - height * v / max;
}
function legend(entries) {
  const box = document.createElement('div'); box.className = 'legend';
  for (const [cls, text] of entries) {
    const item = document.createElement('span'); item.className = 'item';
    const key = document.createElement('span'); key.className = 'key ' + cls;
    item.append(key, text);
    box.appendChild(item);
  }
  return box;
}
// A chart's frame: its box (named in `data-<key>`), title and SVG of two
// panels, and where in it each time goes.
function frame(key, name, points) {
  const f = {w: 400, h: 90, left: 46, gap: 40};
  f.right = f.w - 14;
  f.box = document.createElement('div'); f.box.className = 'chart'; f.box.dataset[key] = name;
  const title = document.createElement('div'); title.textContent = name; f.box.appendChild(title);
  f.svg = document.createElementNS(SVG, 'svg');
  f.svg.setAttribute('width', f.w + 8); f.svg.setAttribute('height', 2 * f.h + f.gap + 40);
  f.t0 = points[0].t; f.t1 = Math.max(points[points.length - 1].t, f.t0 + 1);
  f.x = (t) => f.left + (f.right - f.left) * (t - f.t0) / (f.t1 - f.t0);
  // The upper panel, or the lower.
  f.panel = (lower, max, unit) => panel(f.svg, 16 + (lower ? f.h + f.gap : 0), f.h, max, unit, f.t0, f.t1, f.x, f.right, f.left);
  return f;
}
function chart(name, points) {
  const f = frame('method', name, points), x = f.x;
  const maxRate = Math.max(1, ...points.map((p) => p.rate));
  const maxMs = Math.max(1, ...points.map((p) => p.p99_ms || 0));
  const rateY = f.panel(false, maxRate, 'calls/s');
  line(f.svg, points.map((p) => [x(p.t), rateY(p.rate)]), 'rate');
  const msY = f.panel(true, maxMs, 'ms');
  const lat = (k) => points.filter((p) => p[k] != null).map((p) => [x(p.t), msY(p[k])]);
  line(f.svg, lat('p50_ms'), 'p50'); line(f.svg, lat('p99_ms'), 'p99');
  f.box.dataset.points = String(points.length);
  f.box.dataset.peakRate = maxRate.toFixed(2);
  f.box.appendChild(f.svg);
  const last = points[points.length - 1];
  f.box.appendChild(legend([['rate', 'calls/s (now ' + last.rate.toFixed(1) + ')'], ['p50', 'p50 latency, ms'], ['p99', 'p99 latency, ms']]));
  return f.box;
}
const workHistory = {};
function workChart(queue, points) {
  const f = frame('queue', queue, points), x = f.x;
  const maxTasks = Math.max(1, ...points.map((p) => Math.max(p.backlog, p.in_flight || 0)));
  const maxCount = Math.max(1, ...points.map((p) => Math.max(p.workers, p.consumers)));
  const tasksY = f.panel(false, maxTasks, 'tasks');
  line(f.svg, points.map((p) => [x(p.t), tasksY(p.backlog)]), 'p99');
  line(f.svg, points.filter((p) => p.in_flight != null).map((p) => [x(p.t), tasksY(p.in_flight)]), 'rate');
  const countY = f.panel(true, maxCount, 'workers');
  line(f.svg, points.map((p) => [x(p.t), countY(p.workers)]), 'p50');
  line(f.svg, points.map((p) => [x(p.t), countY(p.consumers)]), 'consumers');
  const last = points[points.length - 1];
  f.box.dataset.samples = String(points.length);
  f.box.dataset.peakBacklog = String(Math.max(...points.map((p) => p.backlog)));
  f.box.dataset.backlog = String(last.backlog);
  f.box.appendChild(f.svg);
  f.box.appendChild(legend([['p99', 'backlog (now ' + last.backlog + ')'], ['rate', 'in flight (now ' + (last.in_flight == null ? '?' : last.in_flight) + ')'],
                            ['p50', 'workers (now ' + last.workers + ')'], ['consumers', 'consumers (now ' + last.consumers + ')']]));
  return f.box;
}
async function refreshWork() {
  const box = document.getElementById('work');
  if (!box) return;
  try {
    const r = await fetch('/v1/work', {headers: authHeaders()});
    if (!r.ok) return;
    const now = Date.now() / 1000;
    for (const q of await r.json()) {
      const series = workHistory[q.queue] || (workHistory[q.queue] = []);
      series.push({t: now, backlog: q.backlog, in_flight: q.in_flight, workers: q.workers, consumers: q.consumers});
      if (series.length > 450) series.shift();
    }
    box.replaceChildren(...Object.entries(workHistory).map(([q, p]) => workChart(q, p)));
    box.dataset.refreshed = String(Date.now());
  } catch (e) {}
}
async function refreshCharts() {
  const charts = document.getElementById('charts');
  if (!charts) return;
  try {
    const r = await fetch('/v1/metrics/history', {headers: authHeaders()});
    if (!r.ok) return;
    const series = await r.json();
    charts.replaceChildren(...Object.entries(series).filter(([, p]) => p.length > 0).map(([m, p]) => chart(m, p)));
    charts.dataset.refreshed = String(Date.now());
  } catch (e) {}
}
function followEvents() {
  const table = document.getElementById('events');
  const form = document.getElementById('event-filter');
  if (!table || !form) return;
  const state = document.getElementById('events-state');
  let source = null;
  const open = () => {
    if (source) source.close();
    for (const row of [...table.querySelectorAll('tr')].slice(1)) row.remove();
    table.dataset.count = '0';
    const q = new URLSearchParams();
    if (form.event_type.value) q.set('event_type', form.event_type.value);
    if (form.priority.value) q.set('priority', form.priority.value);
    source = new EventSource('/events/stream?' + q.toString());
    source.onopen = () => { state.textContent = 'following'; table.dataset.open = '1'; };
    source.onerror = () => { state.textContent = 'reconnecting…'; };
    source.addEventListener('lagged', (e) => { state.textContent = 'missed ' + e.data + ' (too many at once)'; });
    source.onmessage = (e) => {
      const n = JSON.parse(e.data);
      const tr = document.createElement('tr');
      tr.dataset.eventType = n.event_type;
      tr.dataset.priority = n.priority;
      const payload = document.createElement('td');
      const code = document.createElement('code');
      code.textContent = JSON.stringify(n.payload);
      code.title = JSON.stringify(n.payload, null, 2);
      payload.appendChild(code);
      tr.append(cell(n.metadata.timestamp), cell(n.priority, n.priority.toLowerCase()), cell(n.event_type),
                cell(n.publisher_id), payload);
      const header = table.rows[0];
      header.parentNode.insertBefore(tr, header.nextSibling);
      while (table.rows.length > 501) table.deleteRow(-1);
      table.dataset.count = String(Number(table.dataset.count) + 1);
    };
  };
  form.addEventListener('submit', (ev) => { ev.preventDefault(); open(); });
  open();
}
document.addEventListener('DOMContentLoaded', () => {
  followEvents();
  if (document.getElementById('services')) {
    refreshCharts();
    refreshWork();
    setInterval(refreshWork, 2000);
    setInterval(refreshServices, 5000);
    setInterval(refreshCharts, 2000);
  }
  for (const b of document.querySelectorAll('button.use')) b.addEventListener('click', () => useMethod(b));
  const f = document.getElementById('call');
  if (f) {
    const p = new URLSearchParams(location.search);
    for (const k of ['topic', 'server', 'method', 'namespace', 'version', 'args', 'mode', 'timeout']) {
      if (p.has(k)) f[k].value = p.get(k);
    }
    f.addEventListener('submit', submitCall);
  }
  const find = document.getElementById('find-trace');
  if (find) find.addEventListener('submit', (ev) => {
    ev.preventDefault();
    location.href = '/traces/' + encodeURIComponent(find.rid.value);
  });
  const login = document.getElementById('login');
  if (login) {
    login.dataset.ready = '1';
    login.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const token = login.token.value;
      const r = await fetch('/login', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                      body: JSON.stringify({token})});
      if (r.status !== 204) { login.token.value = ''; return; }
      sessionStorage.setItem('nova_token', token);
      location.replace('/');
    });
  }
});
"#;
