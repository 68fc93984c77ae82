//! The OpenAPI document (`engine/openapi.yaml`) against the real server: it lists exactly the
//! routes the router has ([`proctor::api::ROUTES`]), and every answer the server gives, to
//! every route, success or error, has a status the document lists for that operation and a
//! body that validates against the schema the document gives for it.
//!
//! The schema checker here is small on purpose, but it refuses any schema keyword it does
//! not implement, so the document cannot promise something the test does not check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use hyper::Method;
use proctor::agent::example::{self, RunningAgent};
use proctor::agent::AgentRegistry;
use proctor::api::auth::Auth;
use proctor::api::client::ApiClient;
use proctor::api::webhooks::{self, Action, Secret, Webhook, Webhooks};
use proctor::api::{Api, MAX_BODY_BYTES, OPENAPI_YAML, ROUTES};
use proctor::clock::SystemClock;
use proctor::network::{Network, TokioNetwork};
use proctor::store::SqliteStore;
use proctor::{Engine, EngineConfig, Ports, RecoveryConfig};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The document

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Keywords the checker enforces.
const ASSERTIONS: &[&str] = &[
    "$ref",
    "type",
    "const",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "oneOf",
];
/// Keywords that assert nothing.
const ANNOTATIONS: &[&str] = &["description", "default", "example", "examples", "title"];

struct Doc {
    root: Value,
}

impl Doc {
    fn load() -> Doc {
        let root: Value = serde_norway::from_str(OPENAPI_YAML)
            .unwrap_or_else(|e| panic!("openapi.yaml does not parse: {e}"));
        assert!(
            root["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "openapi.yaml is not an OpenAPI 3.1 document: openapi = {}",
            root["openapi"]
        );
        Doc { root }
    }

    /// The object a local `$ref` (`#/components/...`) points at.
    fn pointer(&self, reference: &str) -> &Value {
        let path = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local $refs are supported: {reference}"));
        self.root
            .pointer(path)
            .unwrap_or_else(|| panic!("$ref {reference} points at nothing"))
    }

    /// `value`, with a `$ref` (a response, a parameter) followed.
    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            value = self.pointer(reference);
        }
        value
    }

    fn schema(&self, name: &str) -> &Value {
        self.pointer(&format!("#/components/schemas/{name}"))
    }

    /// Every `(METHOD, path)` the document has an operation for.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let paths = self.root["paths"]
            .as_object()
            .expect("openapi.yaml has `paths`");
        let mut ops = BTreeSet::new();
        for (path, item) in paths {
            let item = item.as_object().expect("a path item is an object");
            for key in item.keys() {
                if METHODS.contains(&key.as_str()) {
                    ops.insert((key.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        ops
    }

    fn operation(&self, method: &str, template: &str) -> &Value {
        let op = &self.root["paths"][template][method.to_ascii_lowercase()];
        assert!(op.is_object(), "no operation {method} {template}");
        op
    }

    /// The documented response for `status`, `$ref` followed.
    fn response(&self, method: &str, template: &str, status: u16) -> Option<&Value> {
        self.operation(method, template)["responses"]
            .get(status.to_string())
            .map(|r| self.resolve(r))
    }

    /// The operation's parameters, `$ref`s followed.
    fn parameters(&self, method: &str, template: &str) -> Vec<&Value> {
        let mut all = Vec::new();
        for list in [
            &self.root["paths"][template]["parameters"],
            &self.operation(method, template)["parameters"],
        ] {
            if let Some(list) = list.as_array() {
                all.extend(list.iter().map(|p| self.resolve(p)));
            }
        }
        all
    }

    /// Whether the operation is authenticated by a webhook signature instead of a token.
    fn signed(&self, method: &str, template: &str) -> bool {
        self.operation(method, template)["security"]
            .as_array()
            .is_some_and(|s| {
                s.iter().any(|req| {
                    req.as_object()
                        .is_some_and(|r| r.contains_key("webhookSignature"))
                })
            })
    }

    /// Whether the operation needs a bearer token: its own `security`, else the document's.
    fn needs_auth(&self, method: &str, template: &str) -> bool {
        let security = match self.operation(method, template).get("security") {
            Some(own) => own,
            None => &self.root["security"],
        };
        security.as_array().is_some_and(|s| {
            s.iter()
                .any(|req| req.as_object().is_some_and(|r| r.contains_key("bearer")))
        })
    }

    /// Every way `value` breaks `schema`, each as `<where>: <problem>`.
    fn check(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate(schema, value, "$", &mut errors);
        errors
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                errors.push(format!("{at}: no value is allowed here"));
                return;
            }
            Value::Object(schema) => schema,
            other => panic!("a schema is an object or a boolean, not {other}"),
        };
        for key in schema.keys() {
            assert!(
                ASSERTIONS.contains(&key.as_str()) || ANNOTATIONS.contains(&key.as_str()),
                "schema keyword {key:?} (at {at}) is not supported by this test's checker: \
                 add it to the checker or leave it out of the document"
            );
        }
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            self.validate(self.pointer(reference), value, at, errors);
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                other => panic!("bad `type` {other} at {at}"),
            };
            if !types.iter().any(|t| has_type(value, t)) {
                errors.push(format!(
                    "{at}: expected {}, got {}",
                    types.join(" or "),
                    short(value)
                ));
                // The other keywords would only repeat the problem.
                return;
            }
        }
        if let Some(want) = schema.get("const") {
            if value != want {
                errors.push(format!("{at}: expected {want}, got {}", short(value)));
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                errors.push(format!(
                    "{at}: {} is not one of {}",
                    short(value),
                    Value::Array(options.clone())
                ));
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    errors.push(format!("{at}: {n} is below the minimum {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    errors.push(format!("{at}: {n} is above the maximum {max}"));
                }
            }
        }
        if let Some(s) = value.as_str() {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    errors.push(format!("{at}: shorter than {min} characters"));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    errors.push(format!("{at}: longer than {max} characters"));
                }
            }
        }
        if let Some(object) = value.as_object() {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !object.contains_key(name) {
                        errors.push(format!("{at}: required field `{name}` is missing"));
                    }
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (name, field) in object {
                let at = format!("{at}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => self.validate(property, field, &at, errors),
                    None => match schema.get("additionalProperties") {
                        None | Some(Value::Bool(true)) => {}
                        Some(Value::Bool(false)) => {
                            errors.push(format!("{at}: field not allowed by the document"))
                        }
                        Some(extra) => self.validate(extra, field, &at, errors),
                    },
                }
            }
        }
        if let Some(items) = value.as_array() {
            let len = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if len < min {
                    errors.push(format!("{at}: fewer than {min} items"));
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if len > max {
                    errors.push(format!("{at}: more than {max} items"));
                }
            }
            let prefix = schema
                .get("prefixItems")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            for (i, item) in items.iter().enumerate() {
                let at = format!("{at}[{i}]");
                match prefix.get(i) {
                    Some(item_schema) => self.validate(item_schema, item, &at, errors),
                    None => {
                        if let Some(item_schema) = schema.get("items") {
                            self.validate(item_schema, item, &at, errors);
                        }
                    }
                }
            }
        }
        if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
            let matching = options
                .iter()
                .filter(|option| self.check(option, value).is_empty())
                .count();
            if matching != 1 {
                let why: Vec<String> = options
                    .iter()
                    .map(|o| self.check(o, value).join("; "))
                    .collect();
                errors.push(format!(
                    "{at}: matches {matching} of the {} `oneOf` schemas, not exactly one ({})",
                    options.len(),
                    why.join(" | ")
                ));
            }
        }
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("unknown JSON Schema type {other:?}"),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 120 {
        format!("{}...", &text[..120])
    } else {
        text
    }
}

/// The ROUTES template `path` matches (literal segments preferred over `{params}`).
fn route_template(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(&'static str, usize)> = None;
    for (_, template) in ROUTES {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut literals = 0;
        let matches = parts.iter().zip(&segments).all(|(p, s)| {
            if p.starts_with('{') && p.ends_with('}') {
                !s.is_empty()
            } else {
                literals += 1;
                p == s
            }
        });
        if matches && best.is_none_or(|(_, l)| literals > l) {
            best = Some((template, literals));
        }
    }
    best.map(|(t, _)| t)
}

// ---------------------------------------------------------------------------------------
// A server, and a client that checks every answer against the document

struct Server {
    api: Arc<Api>,
    engine: Engine,
    addr: String,
    task: tokio::task::JoinHandle<()>,
    _agents: Vec<RunningAgent>,
}

impl Server {
    async fn start(auth: Auth) -> Server {
        let agents = AgentRegistry::parse("test", "agents: { worker: { example: {} } }")
            .expect("agents parse");
        let (registry, running) = example::start_all(&TokioNetwork, &agents)
            .await
            .expect("example agents start");
        let engine = Engine::new(
            Ports {
                clock: Arc::new(SystemClock),
                net: Arc::new(TokioNetwork),
                store: Arc::new(SqliteStore::open_in_memory().expect("SQLite")),
                rng: proctor::rng::seeded(7),
            },
            &registry,
            EngineConfig::default(),
        )
        .expect("engine");
        let api = Arc::new(Api::new(engine.clone(), auth).with_webhooks(test_webhooks()));
        let listener = TokioNetwork.bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address").to_string();
        let serving = api.clone();
        let task =
            tokio::spawn(
                async move { serving.serve(listener, 1_000, std::future::pending()).await },
            );
        Server {
            api,
            engine,
            addr,
            task,
            _agents: running,
        }
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(Arc::new(TokioNetwork), &self.addr, 5_000)
    }

    async fn stop(self) {
        self.api.shut_down();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops")
            .expect("the server task ends cleanly");
    }
}

/// The webhooks every test server has, in the default tenant: `greet-hook` starts `greet`,
/// `gate-hook` sends `approve`.
fn test_webhooks() -> Webhooks {
    let hook = |name: &str, action| Webhook::new(name, "default", action, Secret::new(HOOK_SECRET));
    Webhooks::new([
        hook("greet-hook", Action::Start("greet".into())),
        hook("gate-hook", Action::Signal("approve".into())),
    ])
}

const HOOK_SECRET: &str = "hook-secret-0123456789";

/// A webhook delivery: its headers (signed with [`HOOK_SECRET`]) and JSON body.
struct Signed {
    signature: String,
    delivery: String,
    body: Vec<u8>,
}

impl Signed {
    fn new(delivery: &str, body: &Value) -> Signed {
        let body = serde_json::to_vec(body).unwrap();
        Signed {
            signature: webhooks::sign(HOOK_SECRET.as_bytes(), &body),
            delivery: delivery.to_string(),
            body,
        }
    }

    fn headers(&self) -> [(&str, &str); 2] {
        [
            ("x-proctor-signature", &self.signature),
            ("x-proctor-delivery", &self.delivery),
        ]
    }

    fn body(&self) -> Option<(&'static str, Vec<u8>)> {
        Some(("application/json", self.body.clone()))
    }
}

struct Response {
    status: u16,
    body: Bytes,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }
}

struct Checker {
    doc: Doc,
    client: ApiClient,
    /// Operations that answered with a 2xx.
    covered: BTreeSet<(String, String)>,
}

fn json_body(value: &Value) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/json", serde_json::to_vec(value).unwrap()))
}

impl Checker {
    fn new(client: ApiClient) -> Checker {
        Checker {
            doc: Doc::load(),
            client,
            covered: BTreeSet::new(),
        }
    }

    /// Sends the request, then checks the answer against the document: its status must be
    /// one the document lists for the operation (405 / 404 for a method / path that has
    /// none), and a JSON body must validate against the documented schema.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Response {
        let http_method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = self
            .client
            .request(http_method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let response = Response {
            status: status.as_u16(),
            body,
        };
        let bare = path.split('?').next().unwrap();
        let what = format!("{method} {path} answered {}", response.status);
        let documented = match route_template(bare) {
            Some(template) if ROUTES.contains(&(method, template)) => {
                if (200..300).contains(&response.status) {
                    self.covered
                        .insert((method.to_string(), template.to_string()));
                }
                self.doc
                    .response(method, template, response.status)
                    .unwrap_or_else(|| {
                        panic!(
                            "{what}, a status the document does not list for {method} \
                             {template}; body: {}",
                            String::from_utf8_lossy(&response.body)
                        )
                    })
            }
            Some(template) => {
                assert_eq!(response.status, 405, "{what}: {template} has no {method}");
                self.doc.pointer("#/components/responses/MethodNotAllowed")
            }
            None => {
                assert_eq!(response.status, 404, "{what}: no route matches");
                self.doc.pointer("#/components/responses/NotFound")
            }
        };
        let documented = self.doc.resolve(documented);
        let content = documented["content"].as_object();
        match content.and_then(|c| c.get("application/json")) {
            Some(media) => {
                let value: Value = serde_json::from_slice(&response.body).unwrap_or_else(|e| {
                    panic!(
                        "{what}: the document says JSON, but the body is not ({e}): {}",
                        String::from_utf8_lossy(&response.body)
                    )
                });
                let errors = self.doc.check(&media["schema"], &value);
                assert!(
                    errors.is_empty(),
                    "{what}: the body does not match the documented schema:\n  {}\nbody: {value:#}",
                    errors.join("\n  ")
                );
            }
            None => {
                assert!(
                    content.is_some_and(|c| !c.is_empty()) || response.body.is_empty(),
                    "{what}: the document gives no content for it, but it has a body"
                );
                // A JSON answer where the document promises another media type: the
                // document is out of date.
                assert!(
                    response.body.is_empty()
                        || serde_json::from_slice::<Value>(&response.body).is_err(),
                    "{what}: the document says {:?}, but the body is JSON: {}",
                    content.map(|c| c.keys().collect::<Vec<_>>()),
                    String::from_utf8_lossy(&response.body)
                );
            }
        }
        response
    }

    /// [`Checker::send`], and the status must be `want`.
    async fn expect(
        &mut self,
        want: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Value {
        let response = self.send(method, path, headers, body).await;
        assert_eq!(
            response.status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let json_expected = !response.body.is_empty()
            && path != "/api/openapi.yaml"
            && !(path.contains("/events/stream") && response.status == 200);
        if json_expected {
            response.json()
        } else {
            Value::Null
        }
    }

    /// An error answer: `status`, with `error.type` `kind` (the body is an `Error`, which
    /// [`Checker::send`] has already checked against the documented schema).
    async fn expect_error(
        &mut self,
        status: u16,
        kind: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) {
        let value = self.expect(status, method, path, headers, body).await;
        let errors = self.doc.check(self.doc.schema("Error"), &value);
        assert!(errors.is_empty(), "{method} {path}: {errors:?}");
        assert_eq!(value["error"]["type"], kind, "{method} {path}: {value}");
    }

    /// Polls the execution until its status is one of `want`.
    async fn wait_for(&mut self, id: &str, want: &[&str]) -> Value {
        let path = format!("/api/executions/{id}");
        for _ in 0..500 {
            let execution = self.expect(200, "GET", &path, &[], None).await;
            if want.contains(&execution["status"].as_str().unwrap()) {
                return execution;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("execution {id} never reached {want:?}");
    }

    /// A waiting (running) execution of `gate`: its `approval` step is running.
    async fn start_gate(&mut self) -> String {
        let started = self
            .expect(
                201,
                "POST",
                "/api/executions",
                &[],
                json_body(&json!({"definition": "gate"})),
            )
            .await;
        let id = started["execution"]["id"].as_str().unwrap().to_string();
        let path = format!("/api/executions/{id}");
        for _ in 0..500 {
            let execution = self.expect(200, "GET", &path, &[], None).await;
            if execution["status"] == "running" && execution["steps"][0]["status"] == "running" {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("execution {id} never started waiting");
    }
}

const GREET: &str = "
name: greet
steps:
  - id: hello
    type: agent_task
    agent: worker
    input: { name: '{{input.name}}' }
";

const GATE: &str = "
name: gate
steps:
  - id: approval
    type: wait_signal
    signal: approve
";

fn yaml(text: &str) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/yaml", text.as_bytes().to_vec()))
}

/// The `data:` of each message of a Server-Sent Events body, with its `id:` and `event:`.
fn sse_messages(body: &[u8]) -> Vec<(String, String, Value)> {
    let text = String::from_utf8(body.to_vec()).expect("the stream is UTF-8");
    let mut messages = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            let value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("stream data is not JSON ({e}): {data}"));
            messages.push((id, event, value));
        }
    }
    messages
}

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn the_document_lists_exactly_the_server_routes() {
    let doc = Doc::load();
    let documented = doc.operations();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "openapi.yaml and proctor::api::ROUTES differ:\n  served but not documented: \
         {missing:?}\n  documented but not served: {extra:?}"
    );
    // Every `{param}` of a path is a documented path parameter, and the other way round.
    for (method, template) in &served {
        let in_path: BTreeSet<&str> = template
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        let params = doc.parameters(method, template);
        let declared: BTreeSet<&str> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "{method} {template}: {p}");
                p["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(in_path, declared, "{method} {template}: path parameters");
        let op = doc.operation(method, template);
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {template} documents no responses"
        );
        if doc.needs_auth(method, template) {
            assert!(
                doc.response(method, template, 401).is_some(),
                "{method} {template} needs a token but does not document 401"
            );
        }
    }
    // The limits the document states are the server's.
    assert_eq!(MAX_BODY_BYTES, 1024 * 1024);
    let description = doc.root["info"]["description"].as_str().unwrap();
    assert!(description.contains("1 MiB") && description.contains("1048576"));
    assert!(description.contains("idempotency_key_reused"));
    for name in ["BadRequest", "NotFound", "MethodNotAllowed", "Unauthorized"] {
        let response = doc.pointer(&format!("#/components/responses/{name}"));
        assert_eq!(
            response["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error"
        );
    }
}

#[test]
fn the_checker_rejects_what_the_document_forbids() {
    let doc = Doc::load();
    let step = json!({
        "id": "hello", "status": "completed", "attempt": 1, "retry_count": 0,
        "output": {"echo": {}}, "error": null, "started_at_ms": 5, "finished_at_ms": 6
    });
    let execution = json!({
        "id": "e1", "tenant": "default", "definition": "greet", "version": 1,
        "status": "completed", "input": {}, "output": {"hello": {}}, "error": null,
        "created_at_ms": 1, "updated_at_ms": 2, "idempotency_key": null,
        "progress": {"total": 1, "pending": 0, "running": 0, "completed": 1, "failed": 0,
                     "skipped": 0, "percent": 100},
        "steps": [step]
    });
    let schema = doc.schema("ExecutionView");
    assert_eq!(doc.check(schema, &execution), Vec::<String>::new());
    let broken = |change: &dyn Fn(&mut Value)| {
        let mut e = execution.clone();
        change(&mut e);
        doc.check(schema, &e)
    };
    let problems = [
        broken(&|e| {
            e.as_object_mut().unwrap().remove("progress");
        }),
        broken(&|e| e["version"] = json!("1")),
        broken(&|e| e["version"] = json!(1.5)),
        broken(&|e| e["status"] = json!("sleeping")),
        broken(&|e| e["error"] = json!(3)),
        broken(&|e| e["surprise"] = json!(true)),
        broken(&|e| e["progress"]["percent"] = json!(101)),
        broken(&|e| {
            e["steps"][0].as_object_mut().unwrap().remove("retry_count");
        }),
        broken(&|e| e["steps"][0]["started_at_ms"] = json!("soon")),
        broken(&|e| e["steps"] = json!({})),
    ];
    for (i, p) in problems.iter().enumerate() {
        assert!(!p.is_empty(), "case {i} was not caught");
    }
    // Nullable fields take null, and only where the document says so.
    assert!(broken(&|e| e["idempotency_key"] = json!("k")).is_empty());
    assert!(!broken(&|e| e["tenant"] = Value::Null).is_empty());
    let error = doc.schema("Error");
    assert!(doc
        .check(
            error,
            &json!({"error": {"type": "not_found", "message": "x"}})
        )
        .is_empty());
    assert!(!doc
        .check(error, &json!({"error": {"type": "not_found"}}))
        .is_empty());
    assert!(!doc.check(error, &json!({"message": "x"})).is_empty());
    // `[id, action]` pairs and the nullable report.
    let status = doc.schema("RecoveryStatus");
    assert!(doc.check(status, &json!({"report": null})).is_empty());
    let report = json!({"report": {
        "dry_run": false, "started_at_ms": 1, "finished_at_ms": 2, "resumed": 1,
        "retried": 0, "failed": 0, "skipped": 0, "errors": [], "actions": [["e1", "resume"]]
    }});
    assert!(doc.check(status, &report).is_empty());
    let mut bad = report.clone();
    bad["report"]["actions"][0][1] = json!("explode");
    assert!(!doc.check(status, &bad).is_empty());
    bad["report"]["actions"][0] = json!(["e1"]);
    assert!(!doc.check(status, &bad).is_empty());
    // Template matching prefers literal segments.
    assert_eq!(
        route_template("/api/executions/recovery/status"),
        Some("/api/executions/recovery/status")
    );
    assert_eq!(
        route_template("/api/executions/abc/pause"),
        Some("/api/executions/{id}/pause")
    );
    assert_eq!(route_template("/api/nothing"), None);
}

/// Every route, driven through a real server, answers as the document says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_documented() {
    let server = Server::start(Auth::Open).await;
    let mut c = Checker::new(server.client());

    // Meta.
    let health = c.expect(200, "GET", "/api/health", &[], None).await;
    assert_eq!(health, json!({"status": "ok"}));
    let document = c.send("GET", "/api/openapi.yaml", &[], None).await;
    assert_eq!(document.status, 200);
    assert_eq!(
        document.body,
        OPENAPI_YAML.as_bytes(),
        "serves the document"
    );
    // No recovery ran yet.
    let status = c
        .expect(200, "GET", "/api/executions/recovery/status", &[], None)
        .await;
    assert_eq!(status, json!({"report": null}));

    // Definitions: register (new, unchanged, changed as JSON), list, get, roll back.
    let first = c
        .expect(201, "POST", "/api/definitions", &[], yaml(GREET))
        .await;
    assert_eq!(
        first,
        json!({"name": "greet", "version": 1, "created": true})
    );
    let again = c
        .expect(200, "POST", "/api/definitions", &[], yaml(GREET))
        .await;
    assert_eq!(
        again,
        json!({"name": "greet", "version": 1, "created": false})
    );
    let second = json!({
        "name": "greet",
        "description": "the second version",
        "steps": [{"id": "hello", "type": "agent_task", "agent": "worker",
                   "input": {"name": "{{input.name}}", "v": 2}}]
    });
    let v2 = c
        .expect(201, "POST", "/api/definitions", &[], json_body(&second))
        .await;
    assert_eq!(v2["version"], 2);
    c.expect(201, "POST", "/api/definitions", &[], yaml(GATE))
        .await;
    let list = c.expect(200, "GET", "/api/definitions", &[], None).await;
    assert!(
        list["definitions"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "greet", "current": 2, "latest": 2})),
        "{list}"
    );
    let current = c
        .expect(200, "GET", "/api/definitions/greet", &[], None)
        .await;
    assert_eq!(
        (&current["version"], &current["definition"]["description"]),
        (&json!(2), &json!("the second version"))
    );
    let v1 = c
        .expect(200, "GET", "/api/definitions/greet/versions/1", &[], None)
        .await;
    assert_eq!(
        (&v1["version"], &v1["definition"]["version"]),
        (&json!(1), &json!(1))
    );
    let set = c
        .expect(
            200,
            "PUT",
            "/api/definitions/greet/current",
            &[],
            json_body(&json!({"version": 1})),
        )
        .await;
    assert_eq!(set, json!({"name": "greet", "current": 1}));

    // Start: without a key, with one, and its repeat.
    let started = c
        .expect(
            201,
            "POST",
            "/api/executions",
            &[],
            json_body(&json!({"definition": "greet", "input": {"name": "ana"}})),
        )
        .await;
    assert_eq!(started["created"], true);
    assert_eq!(started["execution"]["version"], 1, "the current version");
    let plain = started["execution"]["id"].as_str().unwrap().to_string();
    let request = json!({"definition": "greet", "version": 2, "input": {"name": "bo"}});
    let keyed = c
        .expect(
            201,
            "POST",
            "/api/executions",
            &[("Idempotency-Key", "order-1")],
            json_body(&request),
        )
        .await;
    assert_eq!(keyed["created"], true);
    assert_eq!(keyed["execution"]["idempotency_key"], "order-1");
    let repeat = c
        .expect(
            200,
            "POST",
            "/api/executions",
            &[("Idempotency-Key", "order-1")],
            json_body(&request),
        )
        .await;
    assert_eq!(repeat["created"], false);
    assert_eq!(repeat["execution"]["id"], keyed["execution"]["id"]);

    let done = c.wait_for(&plain, &["completed"]).await;
    assert_eq!(done["steps"][0]["status"], "completed");
    assert_eq!(done["progress"]["percent"], 100);
    let keyed_id = keyed["execution"]["id"].as_str().unwrap().to_string();
    c.wait_for(&keyed_id, &["completed"]).await;

    // List, with every filter, and its pages.
    let all = c.expect(200, "GET", "/api/executions", &[], None).await;
    assert_eq!(all["executions"].as_array().unwrap().len(), 2);
    assert_eq!(all["next"], Value::Null);
    let filtered = c
        .expect(
            200,
            "GET",
            "/api/executions?status=completed&definition=greet&created_from_ms=0\
             &created_to_ms=99999999999999&limit=1",
            &[],
            None,
        )
        .await;
    let next = filtered["next"].as_str().expect("a full page has `next`");
    let page2 = c
        .expect(
            200,
            "GET",
            &format!("/api/executions?limit=1&after={next}"),
            &[],
            None,
        )
        .await;
    assert_eq!(page2["executions"].as_array().unwrap().len(), 1);
    assert_ne!(
        page2["executions"][0]["id"],
        filtered["executions"][0]["id"]
    );

    // Events: the history, a page of it, and the stream of a finished execution (which
    // replays and ends).
    let history = c
        .expect(
            200,
            "GET",
            &format!("/api/executions/{plain}/events"),
            &[],
            None,
        )
        .await;
    let events = history["events"].as_array().unwrap();
    assert!(events.len() >= 3, "{history}");
    let page = c
        .expect(
            200,
            "GET",
            &format!("/api/executions/{plain}/events?after=1&limit=2"),
            &[],
            None,
        )
        .await;
    assert_eq!(page["events"], json!(events[1..3]));
    let stream_path = format!("/api/executions/{plain}/events/stream?after=1");
    let replay = c.send("GET", &stream_path, &[], None).await;
    assert_eq!(replay.status, 200);
    let messages = sse_messages(&replay.body);
    assert_eq!(messages.len(), events.len() - 1, "every event after 1");
    for (id, kind, data) in &messages {
        let errors = c.doc.check(c.doc.schema("EventRecord"), data);
        assert!(errors.is_empty(), "stream event {data}: {errors:?}");
        assert_eq!(id, &data["seq"].to_string());
        assert_eq!(kind, data["event"]["type"].as_str().unwrap());
    }
    assert_eq!(
        messages.last().unwrap().2["event"]["type"],
        "ExecutionCompleted"
    );

    // Reset a completed execution: a new one (201).
    let fork = c
        .expect(
            201,
            "POST",
            &format!("/api/executions/{plain}/reset"),
            &[],
            json_body(&json!({"input": {"name": "cy"}})),
        )
        .await;
    assert_ne!(fork["id"], json!(plain));
    assert_eq!(fork["input"], json!({"name": "cy"}));
    c.wait_for(fork["id"].as_str().unwrap(), &["completed"])
        .await;
    // An empty body is a reset with the defaults.
    let fork2 = c
        .expect(
            201,
            "POST",
            &format!("/api/executions/{keyed_id}/reset"),
            &[],
            None,
        )
        .await;
    c.wait_for(fork2["id"].as_str().unwrap(), &["completed"])
        .await;

    // Pause, resume, signal, cancel a waiting execution; and a live stream.
    let gate = c.start_gate().await;
    let mut stream = c.client.stream(&gate, 0).await.expect("the stream opens");
    let first_event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10s")
        .expect("the stream has an event")
        .expect("the event decodes");
    let errors = c.doc.check(
        c.doc.schema("EventRecord"),
        &serde_json::to_value(&first_event).unwrap(),
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(first_event.seq, 1);
    c.covered.insert((
        "GET".to_string(),
        "/api/executions/{id}/events/stream".to_string(),
    ));
    drop(stream);

    let paused = c
        .expect(
            200,
            "POST",
            &format!("/api/executions/{gate}/pause"),
            &[],
            None,
        )
        .await;
    assert_eq!(paused["status"], "paused");
    let resumed = c
        .expect(
            200,
            "POST",
            &format!("/api/executions/{gate}/resume"),
            &[],
            None,
        )
        .await;
    assert_eq!(resumed["status"], "running");
    c.expect(
        200,
        "POST",
        &format!("/api/executions/{gate}/signal"),
        &[],
        json_body(&json!({"name": "approve", "payload": {"by": "ana"}, "id": "sig-1"})),
    )
    .await;
    let approved = c.wait_for(&gate, &["completed"]).await;
    assert_eq!(
        approved["steps"][0]["output"]["payload"],
        json!({"by": "ana"})
    );

    let gate2 = c.start_gate().await;
    let cancelled = c
        .expect(
            200,
            "POST",
            &format!("/api/executions/{gate2}/cancel"),
            &[],
            json_body(&json!({"reason": "not needed"})),
        )
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    // Cancelling a finished execution changes nothing; the body may be left out.
    let again = c
        .expect(
            200,
            "POST",
            &format!("/api/executions/{gate2}/cancel"),
            &[],
            None,
        )
        .await;
    assert_eq!(again["status"], "cancelled");

    // Recovery: an execution left pending is resumed; the status shows the report.
    c.expect(200, "GET", &format!("/api/executions/{plain}"), &[], None)
        .await;
    server
        .engine
        .create_registered("left-pending", "greet", None, json!({"name": "dee"}))
        .await
        .expect("create");
    server
        .engine
        .recover(RecoveryConfig::default())
        .await
        .expect("recovery runs");
    let status = c
        .expect(200, "GET", "/api/executions/recovery/status", &[], None)
        .await;
    assert_eq!(status["report"]["resumed"], 1, "{status}");
    assert_eq!(
        status["report"]["actions"],
        json!([["left-pending", "resume"]])
    );
    c.wait_for("left-pending", &["completed"]).await;

    // Webhooks: a start and its replay; a signal to a waiting gate and its replay.
    let order = Signed::new("order-1", &json!({"name": "hook"}));
    let (path, headers) = ("/api/webhooks/greet-hook", order.headers());
    let created = c.expect(201, "POST", path, &headers, order.body()).await;
    assert_eq!(created["applied"], true, "{created}");
    assert_eq!(created["delivery"], "order-1");
    let replayed = c.expect(200, "POST", path, &headers, order.body()).await;
    assert_eq!(replayed["applied"], false, "{replayed}");
    assert_eq!(replayed["execution_id"], created["execution_id"]);
    let started = created["execution_id"].as_str().unwrap();
    let done = c.wait_for(started, &["completed"]).await;
    assert_eq!(done["input"], json!({"name": "hook"}));
    let gate = c.start_gate().await;
    let approval = Signed::new("approval-1", &json!({"by": "hook"}));
    let path = format!("/api/webhooks/gate-hook/{gate}");
    let headers = approval.headers();
    let signalled = c
        .expect(200, "POST", &path, &headers, approval.body())
        .await;
    assert_eq!(signalled["applied"], true, "{signalled}");
    let done = c.wait_for(&gate, &["completed"]).await;
    assert_eq!(done["steps"][0]["output"]["payload"], json!({"by": "hook"}));
    let replayed = c
        .expect(200, "POST", &path, &headers, approval.body())
        .await;
    assert_eq!(replayed["applied"], false, "{replayed}");

    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let untested: Vec<_> = served.difference(&c.covered).collect();
    assert!(
        untested.is_empty(),
        "routes never answered 2xx: {untested:?}"
    );
    server.stop().await;
}

/// Failures: each is a documented status for its operation, with an `Error` body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_answer_as_documented() {
    let server = Server::start(Auth::Open).await;
    let mut c = Checker::new(server.client());
    c.expect(201, "POST", "/api/definitions", &[], yaml(GREET))
        .await;
    c.expect(201, "POST", "/api/definitions", &[], yaml(GATE))
        .await;

    // The router's own: no route, wrong method.
    c.expect_error(404, "not_found", "GET", "/api/nothing", &[], None)
        .await;
    c.expect_error(
        405,
        "method_not_allowed",
        "DELETE",
        "/api/executions/abc",
        &[],
        None,
    )
    .await;
    c.expect_error(405, "method_not_allowed", "POST", "/api/health", &[], None)
        .await;

    // Definitions.
    c.expect_error(
        415,
        "unsupported_media_type",
        "POST",
        "/api/definitions",
        &[],
        Some(("text/plain", GREET.as_bytes().to_vec())),
    )
    .await;
    let unknown_agent = GREET.replace("worker", "nobody");
    c.expect_error(
        422,
        "invalid_definition",
        "POST",
        "/api/definitions",
        &[],
        yaml(&unknown_agent),
    )
    .await;
    c.expect_error(
        422,
        "invalid_definition",
        "POST",
        "/api/definitions",
        &[],
        yaml("name: [oops"),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "POST",
        "/api/definitions",
        &[],
        Some(("application/yaml", vec![0xff, 0xfe])),
    )
    .await;
    c.expect_error(404, "not_found", "GET", "/api/definitions/nope", &[], None)
        .await;
    c.expect_error(
        404,
        "not_found",
        "GET",
        "/api/definitions/greet/versions/9",
        &[],
        None,
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "GET",
        "/api/definitions/greet/versions/one",
        &[],
        None,
    )
    .await;
    c.expect_error(
        404,
        "not_found",
        "PUT",
        "/api/definitions/greet/current",
        &[],
        json_body(&json!({"version": 9})),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "PUT",
        "/api/definitions/greet/current",
        &[],
        json_body(&json!({"version": 1, "force": true})),
    )
    .await;
    c.expect_error(
        415,
        "unsupported_media_type",
        "PUT",
        "/api/definitions/greet/current",
        &[],
        Some(("text/plain", b"{\"version\": 1}".to_vec())),
    )
    .await;

    // Starting.
    let start = |body: Value| json_body(&body);
    c.expect_error(
        400,
        "bad_request",
        "POST",
        "/api/executions",
        &[],
        start(json!({"definition": "greet", "inptu": {}})),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "POST",
        "/api/executions",
        &[],
        start(json!({"input": {}})),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "POST",
        "/api/executions",
        &[],
        Some(("application/json", b"{not json".to_vec())),
    )
    .await;
    c.expect_error(
        415,
        "unsupported_media_type",
        "POST",
        "/api/executions",
        &[],
        Some(("text/plain", b"{\"definition\": \"greet\"}".to_vec())),
    )
    .await;
    c.expect_error(
        404,
        "not_found",
        "POST",
        "/api/executions",
        &[],
        start(json!({"definition": "nope"})),
    )
    .await;
    c.expect_error(
        404,
        "not_found",
        "POST",
        "/api/executions",
        &[],
        start(json!({"definition": "greet", "version": 7})),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "POST",
        "/api/executions",
        &[("Idempotency-Key", "has space")],
        start(json!({"definition": "greet"})),
    )
    .await;
    c.expect(
        201,
        "POST",
        "/api/executions",
        &[("Idempotency-Key", "k1")],
        start(json!({"definition": "greet", "input": {"n": 1}})),
    )
    .await;
    c.expect_error(
        409,
        "idempotency_key_reused",
        "POST",
        "/api/executions",
        &[("Idempotency-Key", "k1")],
        start(json!({"definition": "greet", "input": {"n": 2}})),
    )
    .await;
    c.expect_error(
        409,
        "idempotency_key_reused",
        "POST",
        "/api/executions",
        &[("Idempotency-Key", "k1")],
        start(json!({"definition": "gate", "input": {"n": 1}})),
    )
    .await;
    let mut big = br#"{"definition": "greet", "input": ""#.to_vec();
    big.resize(MAX_BODY_BYTES + 16, b'x');
    big.extend_from_slice(br#""}"#);
    c.expect_error(
        413,
        "payload_too_large",
        "POST",
        "/api/executions",
        &[],
        Some(("application/json", big.clone())),
    )
    .await;

    // Listing.
    for query in [
        "status=sleeping",
        "limit=0",
        "limit=501",
        "limit=ten",
        "after=nocolon",
        "page=2",
    ] {
        c.expect_error(
            400,
            "bad_request",
            "GET",
            &format!("/api/executions?{query}"),
            &[],
            None,
        )
        .await;
    }

    // One execution: unknown, and its controls refused.
    for (method, tail) in [
        ("GET", ""),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("POST", "/cancel"),
        ("POST", "/reset"),
        ("GET", "/events"),
        ("GET", "/events/stream"),
    ] {
        c.expect_error(
            404,
            "not_found",
            method,
            &format!("/api/executions/missing{tail}"),
            &[],
            None,
        )
        .await;
    }
    c.expect_error(
        404,
        "not_found",
        "POST",
        "/api/executions/missing/signal",
        &[],
        json_body(&json!({"name": "approve"})),
    )
    .await;

    let gate = c.start_gate().await;
    c.expect_error(
        409,
        "conflict",
        "POST",
        &format!("/api/executions/{gate}/resume"),
        &[],
        None,
    )
    .await;
    c.expect_error(
        409,
        "conflict",
        "POST",
        &format!("/api/executions/{gate}/reset"),
        &[],
        None,
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "POST",
        &format!("/api/executions/{gate}/signal"),
        &[],
        json_body(&json!({"name": "approve", "colour": "red"})),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "POST",
        &format!("/api/executions/{gate}/signal"),
        &[],
        json_body(&json!({"name": ""})),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "POST",
        &format!("/api/executions/{gate}/cancel"),
        &[],
        json_body(&json!({"why": "typo"})),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "GET",
        &format!("/api/executions/{gate}/events?limit=0"),
        &[],
        None,
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "GET",
        &format!("/api/executions/{gate}/events/stream"),
        &[("Last-Event-ID", "latest")],
        None,
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "GET",
        &format!("/api/executions/{gate}/events/stream?since=3"),
        &[],
        None,
    )
    .await;
    // An oversized optional body is 413 too.
    c.expect_error(
        413,
        "payload_too_large",
        "POST",
        &format!("/api/executions/{gate}/cancel"),
        &[],
        Some(("application/json", big.clone())),
    )
    .await;
    c.expect(
        200,
        "POST",
        &format!("/api/executions/{gate}/cancel"),
        &[],
        None,
    )
    .await;
    // Reset: a checkpoint that does not exist; an output for a step that had not completed.
    let started = c
        .expect(
            201,
            "POST",
            "/api/executions",
            &[],
            start(json!({"definition": "greet", "input": {"name": "eve"}})),
        )
        .await;
    let id = started["execution"]["id"].as_str().unwrap().to_string();
    c.wait_for(&id, &["completed"]).await;
    c.expect_error(
        409,
        "conflict",
        "POST",
        &format!("/api/executions/{id}/reset"),
        &[],
        json_body(&json!({"checkpoint_seq": 9999})),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "POST",
        &format!("/api/executions/{id}/reset"),
        &[],
        json_body(&json!({"outputs": {"nope": 1}})),
    )
    .await;
    c.expect_error(
        409,
        "conflict",
        "POST",
        &format!("/api/executions/{gate}/reset"),
        &[],
        None,
    )
    .await;

    // Webhooks, in the order the server checks them.
    let hook_errors = [
        (404, "not_found", "/api/webhooks/nobody", None),
        (
            401,
            "invalid_signature",
            "/api/webhooks/greet-hook",
            Some("sha256=00"),
        ),
        (404, "not_found", "/api/webhooks/gate-hook", None),
        (
            404,
            "not_found",
            &format!("/api/webhooks/greet-hook/{gate}"),
            None,
        ),
        (
            404,
            "not_found",
            "/api/webhooks/gate-hook/nothing-here",
            None,
        ),
    ];
    let delivery = Signed::new("d-1", &json!({"x": 1}));
    for (status, kind, path, signature) in hook_errors {
        let mut headers = delivery.headers();
        if let Some(signature) = signature {
            headers[0].1 = signature;
        }
        c.expect_error(status, kind, "POST", path, &headers, delivery.body())
            .await;
    }
    let unsigned = [("x-proctor-delivery", "d-1")];
    let path = "/api/webhooks/greet-hook";
    c.expect_error(
        401,
        "invalid_signature",
        "POST",
        path,
        &unsigned,
        delivery.body(),
    )
    .await;
    c.expect_error(
        400,
        "bad_request",
        "POST",
        path,
        &delivery.headers()[..1],
        delivery.body(),
    )
    .await;
    let spaced = [delivery.headers()[0], ("x-proctor-delivery", "has space")];
    c.expect_error(400, "bad_request", "POST", path, &spaced, delivery.body())
        .await;
    let text = Some(("text/plain", delivery.body.clone()));
    c.expect_error(
        415,
        "unsupported_media_type",
        "POST",
        path,
        &delivery.headers(),
        text,
    )
    .await;
    let not_json = Signed {
        signature: webhooks::sign(HOOK_SECRET.as_bytes(), b"{oops"),
        delivery: "d-2".into(),
        body: b"{oops".to_vec(),
    };
    c.expect_error(
        400,
        "bad_request",
        "POST",
        path,
        &not_json.headers(),
        not_json.body(),
    )
    .await;
    let mut big = b"{\"x\": \"".to_vec();
    big.resize(MAX_BODY_BYTES + 16, b'x');
    big.extend_from_slice(b"\"}");
    let big = Signed {
        signature: webhooks::sign(HOOK_SECRET.as_bytes(), &big),
        delivery: "d-3".into(),
        body: big,
    };
    c.expect_error(
        413,
        "payload_too_large",
        "POST",
        path,
        &big.headers(),
        big.body(),
    )
    .await;
    c.expect(201, "POST", path, &delivery.headers(), delivery.body())
        .await;
    let changed = Signed::new("d-1", &json!({"x": 2}));
    c.expect_error(
        409,
        "idempotency_key_reused",
        "POST",
        path,
        &changed.headers(),
        changed.body(),
    )
    .await;
    let huge_payload = Signed::new("d-4", &json!({"x": "y".repeat(70 * 1024)}));
    let waiting = c.start_gate().await;
    let waiting_path = format!("/api/webhooks/gate-hook/{waiting}");
    c.expect_error(
        400,
        "bad_request",
        "POST",
        &waiting_path,
        &huge_payload.headers(),
        huge_payload.body(),
    )
    .await;
    // `gate` was cancelled above: it will never take a signal.
    let gate_path = format!("/api/webhooks/gate-hook/{gate}");
    c.expect_error(
        409,
        "conflict",
        "POST",
        &gate_path,
        &delivery.headers(),
        delivery.body(),
    )
    .await;

    // The definition upload's oversized body (read as raw bytes, not JSON).
    let mut big_yaml = b"name: greet\ndescription: '".to_vec();
    big_yaml.resize(MAX_BODY_BYTES + 16, b'x');
    big_yaml.extend_from_slice(b"'\nsteps: []\n");
    c.expect_error(
        413,
        "payload_too_large",
        "POST",
        "/api/definitions",
        &[],
        Some(("application/yaml", big_yaml)),
    )
    .await;
    server.stop().await;
}

/// With a tokens file, every route but health and this document needs a token, exactly as
/// the document's `security` says; a token acts for its tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_is_as_documented() {
    let auth = Auth::parse("tokens: [{name: ci, token: aaaaaaaaaaaaaaaaaaaa, tenant: acme}]")
        .expect("tokens parse");
    let server = Server::start(auth).await;
    let mut c = Checker::new(server.client());
    let doc = Doc::load();
    let values: BTreeMap<&str, &str> = [
        ("{id}", "x"),
        ("{execution_id}", "x"),
        ("{name}", "greet"),
        ("{version}", "1"),
    ]
    .into_iter()
    .collect();
    for (method, template) in ROUTES {
        let mut path = template
            .split('/')
            .map(|s| values.get(s).copied().unwrap_or(s))
            .collect::<Vec<_>>()
            .join("/");
        if doc.signed(method, template) {
            // A webhook's delivery: no token is asked for, and without a signature (or with
            // only a token) it is refused.
            path = path.replace("/greet", "/greet-hook");
            let token = [("Authorization", "Bearer aaaaaaaaaaaaaaaaaaaa")];
            for headers in [&[][..], &token[..]] {
                let response = c.send(method, &path, headers, None).await;
                assert_eq!(response.status, 401, "{method} {template} unsigned");
                assert_eq!(response.json()["error"]["type"], "invalid_signature");
            }
            assert!(!doc.needs_auth(method, template), "{method} {template}");
            continue;
        }
        let response = c.send(method, &path, &[], None).await;
        if doc.needs_auth(method, template) {
            assert_eq!(
                response.status,
                401,
                "{method} {template} without a token: {}",
                String::from_utf8_lossy(&response.body)
            );
            assert_eq!(response.json()["error"]["type"], "unauthorized");
        } else {
            assert_eq!(response.status, 200, "{method} {template} is open");
        }
        let wrong = [("Authorization", "Bearer bbbbbbbbbbbbbbbbbbbb")];
        let response = c.send(method, &path, &wrong, None).await;
        if doc.needs_auth(method, template) {
            assert_eq!(response.status, 401, "{method} {template}, a wrong token");
        }
    }
    // With the token: the tenant's own (empty) world.
    let mut c = Checker::new(server.client().with_token("aaaaaaaaaaaaaaaaaaaa"));
    c.expect(201, "POST", "/api/definitions", &[], yaml(GREET))
        .await;
    let started = c
        .expect(
            201,
            "POST",
            "/api/executions",
            &[],
            json_body(&json!({"definition": "greet"})),
        )
        .await;
    assert_eq!(started["execution"]["tenant"], "acme");
    let list = c.expect(200, "GET", "/api/definitions", &[], None).await;
    assert_eq!(list["definitions"].as_array().unwrap().len(), 1);
    server.stop().await;
}
