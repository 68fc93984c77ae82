//! Process definitions: the typed form of a YAML or JSON process file, and its loading.
//!
//! Parsing is serde's job; [`validate`] checks what serde cannot (graph shape, references,
//! expressions). A definition that passes both is what the execution core assumes: the core
//! asserts these properties rather than re-checking them.

mod duration;
pub mod graph;
pub mod validate;

use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use duration::DurationMs;
pub use validate::{validate, Diagnostic, Diagnostics};

/// Upper bound on steps in one process: keeps per-transition work and history bounded.
pub const MAX_STEPS_PER_PROCESS: usize = 1_000;
/// Upper bound on attempts of one step, whatever the retry policy says.
pub const MAX_ATTEMPTS_PER_STEP: u32 = 100;
/// Upper bound on the items of one `foreach` step: its item states live in the step's row.
/// A longer list fails the step with an error naming both numbers.
pub const MAX_FOREACH_ITEMS: usize = 1_000;
/// Upper bound on a `foreach` step's `max_concurrency`.
pub const MAX_FOREACH_CONCURRENCY: u32 = 100;

/// A whole process definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessDef {
    pub name: String,
    #[serde(default = "default_version")]
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When one parallel branch fails for good: `true` cancels the running siblings and fails
    /// at once; `false` lets the running siblings finish, starts nothing new, then fails.
    #[serde(default = "default_true")]
    pub stop_on_failure: bool,
    /// What a fatal step failure does to the execution: fail at once, or first compensate
    /// every completed step that declares a compensating action (a saga).
    #[serde(default, skip_serializing_if = "FailurePolicy::is_fail")]
    pub on_failure: FailurePolicy,
    /// Optional execution output: templates over `input` and `steps`. Without it the output is
    /// an object of every completed step's output, keyed by step id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    pub steps: Vec<StepDef>,
}

fn default_version() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

/// One step of a process. Unknown fields are rejected by the flattened kind's structs (serde
/// cannot combine `deny_unknown_fields` with `flatten` on this level).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepDef {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(flatten)]
    pub kind: StepKind,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepKind {
    AgentTask(AgentTask),
    Gateway(Gateway),
    Timer(Timer),
    Foreach(Box<Foreach>),
    WaitSignal(WaitSignal),
    Subprocess(Subprocess),
    Http(Box<HttpTask>),
    Transform(Transform),
    Email(Box<EmailTask>),
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::AgentTask(_) => "agent_task",
            StepKind::Gateway(_) => "gateway",
            StepKind::Timer(_) => "timer",
            StepKind::Foreach(_) => "foreach",
            StepKind::WaitSignal(_) => "wait_signal",
            StepKind::Subprocess(_) => "subprocess",
            StepKind::Http(_) => "http",
            StepKind::Transform(_) => "transform",
            StepKind::Email(_) => "email",
        }
    }

    /// The retry policy of a step whose attempts are calls out of the engine (an agent task,
    /// an HTTP request): such a step has attempts, a timeout, and is re-sent after a crash.
    pub fn call_retry(&self) -> Option<&RetryPolicy> {
        match self {
            StepKind::AgentTask(task) => Some(&task.retry),
            StepKind::Http(http) => Some(&http.retry),
            StepKind::Email(email) => Some(&email.retry),
            _ => None,
        }
    }
}

/// Sends one plain HTTP request (no agent protocol) and completes with the response:
/// `{status, headers, body}`, the body parsed as JSON when its content type says JSON.
/// `url`, header values and `body` are templates; a header value may also name a secret,
/// `${secrets.NAME}`, which is filled in only when the request is sent, so it is never stored
/// in the step's input, its events or its errors. Every attempt carries the step's
/// idempotency key in an `Idempotency-Key` header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTask {
    #[serde(default = "default_method")]
    pub method: String,
    /// `http://host[:port]/path?query`.
    pub url: String,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, String>,
    /// A JSON body (any JSON value, sent as `application/json`), or a string sent as
    /// `text/plain` unless a `content-type` header says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Statuses that complete the step: codes (`200`) or classes (`"2xx"`). Default: 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<StatusMatch>,
    #[serde(default = "default_step_timeout")]
    pub timeout: DurationMs,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub on_error: OnError,
}

fn default_method() -> String {
    "GET".to_string()
}

/// The methods an `http` step may send.
pub const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// One entry of an `http` step's `success` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusMatch {
    Code(u16),
    /// `"2xx"`, `"4xx"`, or a code as a string.
    Pattern(String),
}

impl StatusMatch {
    /// Whether `status` matches; `None` for a malformed pattern (validation reports those).
    pub fn matches(&self, status: u16) -> Option<bool> {
        match self {
            StatusMatch::Code(code) => (100..=599).contains(code).then_some(*code == status),
            StatusMatch::Pattern(p) => {
                let p = p.trim().to_ascii_lowercase();
                if let Some(class) = p.strip_suffix("xx") {
                    let class: u16 = class.parse().ok().filter(|c| (1..=5).contains(c))?;
                    (p.len() == 3).then_some(status / 100 == class)
                } else {
                    let code: u16 = p.parse().ok().filter(|c| (100..=599).contains(c))?;
                    Some(code == status)
                }
            }
        }
    }
}

impl std::fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusMatch::Code(code) => write!(f, "{code}"),
            StatusMatch::Pattern(p) => write!(f, "{p:?}"),
        }
    }
}

/// Whether `status` completes an `http` step with this `success` list.
pub fn http_success(success: &[StatusMatch], status: u16) -> bool {
    if success.is_empty() {
        (200..300).contains(&status)
    } else {
        success.iter().any(|m| m.matches(status) == Some(true))
    }
}

/// Sends one email through the engine's SMTP server (`EngineConfig::smtp`: `proctor` reads
/// `PROCTOR_SMTP`) and completes with `{message_id, to, response}`. `to`, `subject` and `body`
/// are templates. The step's idempotency key goes into an `X-Proctor-Idempotency-Key` header,
/// and the `Message-ID` is made from it, so a message re-sent after a crash is the same
/// message to whoever reads the mailbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailTask {
    /// One address, or a list (each a template; a template may also give a list).
    pub to: Value,
    /// The sender; the engine's configured sender when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub subject: String,
    /// Plain text.
    pub body: String,
    #[serde(default = "default_step_timeout")]
    pub timeout: DurationMs,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub on_error: OnError,
}

/// Most recipients of one `email` step.
pub const MAX_EMAIL_RECIPIENTS: usize = 50;

/// Computes its output from templates over `input` and `steps`, with no I/O: for reshaping
/// data between steps. An expression that fails fails the step, naming the expression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// Any JSON value; strings may hold `{{ expr }}` templates (a string that is one template
    /// keeps the expression's type).
    pub output: Value,
    #[serde(default)]
    pub on_error: OnError,
}

/// Calls an external agent over HTTP (DESIGN §2's protocol).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTask {
    pub agent: String,
    /// The request's `input`: any JSON value; strings may hold `{{ expr }}` templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Limit on one attempt's response time.
    #[serde(default = "default_step_timeout")]
    pub timeout: DurationMs,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub on_error: OnError,
    /// The call that undoes this step's effect, run if the execution is compensated after
    /// this step completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Box<Compensate>>,
}

/// A compensating action (DESIGN §2): an agent call with its own input, timeout and retries.
/// Its input templates see the same scope as the step's, including the step's own output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compensate {
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default = "default_step_timeout")]
    pub timeout: DurationMs,
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// The execution-level reaction to a fatal step failure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Fail the execution.
    #[default]
    Fail,
    /// Compensate the completed steps in reverse completion order, then fail.
    Compensate,
}

impl FailurePolicy {
    fn is_fail(&self) -> bool {
        *self == FailurePolicy::Fail
    }
}

fn default_step_timeout() -> DurationMs {
    DurationMs(30_000)
}

/// Starts a registered definition as a child execution (`<parent>.<step>`) and completes with
/// its output; fails (under `on_error`) when the child fails or is cancelled. Cancelling the
/// parent cancels the child.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subprocess {
    /// A name in the definition registry.
    pub process: String,
    /// A registered version; the current one when absent (resolved when the child is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The child's input (templates over `input` and `steps`); `{}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default)]
    pub on_error: OnError,
}

/// Waits for a named signal sent to the execution (a human approval, an external event) and
/// completes with `{signal, signal_id, payload, timed_out}`. A signal sent before the step is
/// reached is kept and consumed when it is; each signal is consumed by at most one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitSignal {
    pub signal: String,
    /// Give up after this long: the step fails with a timeout, or, with `timeout_output`,
    /// completes with `timed_out: true` and that payload (route on it with a gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationMs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_output: Option<Value>,
}

/// A loop: one agent call per item of a list, in order, up to `max_concurrency` at a time.
/// The step completes with `{items: [...], count, skipped, errors, broken_at}`: `items` holds
/// the outputs in item order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Foreach {
    /// A `{{ expr }}` template that gives the list (over `input` and `steps`).
    pub items: String,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    /// A CEL condition checked after each item completes (sees `item`, `index`, `output`):
    /// when it holds, no further item starts; items in flight finish and are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_when: Option<String>,
    /// What an item that failed for good does to the loop.
    #[serde(default)]
    pub on_item_error: ItemErrorPolicy,
    /// The per-item call. `input` templates also see `item` and `index`.
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default = "default_step_timeout")]
    pub timeout: DurationMs,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// What the step failing (an item under `on_item_error: fail`, a bad list) does.
    #[serde(default)]
    pub on_error: OnError,
}

fn default_concurrency() -> u32 {
    1
}

/// A `foreach` item that failed for good.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemErrorPolicy {
    /// The loop step fails (items in flight are abandoned).
    #[default]
    Fail,
    /// The item is left out of `items` and listed in `skipped`.
    Skip,
    /// The item's slot in `items` is null and its error is in `errors`.
    Continue,
}

/// Exclusive gateway: the first route whose `when` holds is taken, else `default`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A CEL condition over `input` and `steps`.
    pub when: String,
    pub to: Vec<String>,
}

/// Waits for a duration from its start, or until an absolute RFC 3339 time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationMs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// Retry policy. `max_attempts` counts the first attempt: 1 means no retry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial_delay")]
    pub initial_delay: DurationMs,
    #[serde(default = "default_backoff")]
    pub backoff: f64,
    #[serde(default = "default_max_delay")]
    pub max_delay: DurationMs,
    /// Relative jitter: the delay is scaled by a factor drawn from `[1 - jitter, 1 + jitter]`.
    #[serde(default)]
    pub jitter: f64,
    /// Agent error types (from a 4xx body's `error.type`) that are never retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_retryable: Vec<String>,
}

fn default_max_attempts() -> u32 {
    1
}
fn default_initial_delay() -> DurationMs {
    DurationMs(1_000)
}
fn default_backoff() -> f64 {
    2.0
}
fn default_max_delay() -> DurationMs {
    DurationMs(60_000)
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            initial_delay: default_initial_delay(),
            backoff: default_backoff(),
            max_delay: default_max_delay(),
            jitter: 0.0,
            non_retryable: Vec::new(),
        }
    }
}

/// What happens when a step has failed for good (retries exhausted or not retryable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The step is failed and so is the execution.
    #[default]
    Fail,
    /// The step is recorded skipped (its error kept); dependants run as if it had completed
    /// with a null output.
    SkipStep,
    /// The step is recorded failed but the execution goes on; dependants run and can inspect
    /// `steps.<id>.status` and `steps.<id>.error`.
    Continue,
    /// The step is failed, and the execution compensates its completed steps (in reverse
    /// completion order) before failing, whatever the process's `on_failure` says.
    Compensate,
}

/// The source format of a definition file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// JSON for `.json` files, YAML otherwise (YAML is a superset of JSON anyway).
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// The top level before steps are typed, so that a step's parse error can name the step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    name: String,
    #[serde(default = "default_version")]
    version: u32,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "default_true")]
    stop_on_failure: bool,
    #[serde(default)]
    on_failure: FailurePolicy,
    #[serde(default)]
    output: Option<Value>,
    steps: Vec<Value>,
}

/// Parses a definition from text. `origin` names the file in errors; a step that does not parse
/// is named by its id (or its position when it has none).
pub fn parse(origin: &str, text: &str, format: Format) -> Result<ProcessDef, Diagnostics> {
    let fail = |step: Option<String>, problem: String| Diagnostics {
        file: origin.to_string(),
        items: vec![Diagnostic { step, problem }],
    };
    let raw = match format {
        Format::Yaml => serde_norway::from_str::<RawProcess>(text).map_err(|e| e.to_string()),
        Format::Json => serde_json::from_str::<RawProcess>(text).map_err(|e| e.to_string()),
    }
    .map_err(|e| fail(None, format!("cannot parse definition: {e}")))?;
    let mut steps = Vec::with_capacity(raw.steps.len());
    let mut problems = Vec::new();
    for (position, value) in raw.steps.into_iter().enumerate() {
        let label = value
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", position + 1));
        match serde_json::from_value::<StepDef>(value) {
            Ok(step) => steps.push(step),
            Err(e) => problems.push(Diagnostic {
                step: Some(label),
                problem: e.to_string(),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(Diagnostics {
            file: origin.to_string(),
            items: problems,
        });
    }
    Ok(ProcessDef {
        name: raw.name,
        version: raw.version,
        description: raw.description,
        stop_on_failure: raw.stop_on_failure,
        on_failure: raw.on_failure,
        output: raw.output,
        steps,
    })
}

/// Reads, parses and validates a definition file. `agents`, when given, are the names an
/// `agent_task` may use.
pub fn load(path: &Path, agents: Option<&[String]>) -> Result<ProcessDef, Diagnostics> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostics {
        file: origin.clone(),
        items: vec![Diagnostic {
            step: None,
            problem: format!("cannot read file: {e}"),
        }],
    })?;
    let def = parse(&origin, &text, Format::from_path(path))?;
    validate(&origin, &def, agents)?;
    Ok(def)
}

impl ProcessDef {
    /// Index of a step by id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// Step ids in definition order, each mapped to its index.
    pub fn index(&self) -> IndexMap<&str, usize> {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_give_the_same_definition() {
        let yaml = "name: p\nversion: 3\nsteps:\n  - id: a\n    type: agent_task\n    agent: echo\n    input: {x: '{{input.x}}'}\n    timeout: 2s\n    retry: {max_attempts: 2}\n  - {id: t, type: timer, duration: 1m, depends_on: [a]}\n";
        let json = r#"{"name": "p", "version": 3, "steps": [
            {"id": "a", "type": "agent_task", "agent": "echo", "input": {"x": "{{input.x}}"},
             "timeout": "2s", "retry": {"max_attempts": 2}},
            {"id": "t", "type": "timer", "duration": 60000, "depends_on": ["a"]}]}"#;
        let from_yaml = parse("p.yaml", yaml, Format::Yaml).unwrap();
        let from_json = parse("p.json", json, Format::Json).unwrap();
        assert_eq!(from_yaml, from_json);
        let StepKind::AgentTask(task) = &from_yaml.steps[0].kind else {
            panic!("agent task expected")
        };
        assert_eq!(task.timeout, DurationMs(2_000));
        assert_eq!(task.retry.max_attempts, 2);
        assert_eq!(task.on_error, OnError::Fail);
    }

    #[test]
    fn definitions_round_trip_through_json() {
        let yaml = "name: p\nsteps:\n  - id: g\n    type: gateway\n    routes: [{when: 'input.x > 1', to: [a]}]\n    default: [b]\n  - {id: a, type: agent_task, agent: e, depends_on: [g], on_error: skip_step}\n  - {id: b, type: timer, until: '2030-01-01T00:00:00Z', depends_on: [g]}\n";
        let def = parse("p.yaml", yaml, Format::Yaml).unwrap();
        let text = serde_json::to_string(&def).unwrap();
        assert_eq!(parse("p.json", &text, Format::Json).unwrap(), def);
    }

    #[test]
    fn unknown_top_level_field_is_reported() {
        let err = parse("p.yaml", "name: p\nstepz: []\n", Format::Yaml).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("p.yaml: cannot parse definition"),
            "{err}"
        );
        assert!(err.to_string().contains("stepz"), "{err}");
    }
}
