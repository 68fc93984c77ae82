//! Validation of a parsed definition: everything serde cannot see. Every problem names the file,
//! the step (where there is one) and what is wrong; all problems are reported, not just the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{
    DurationMs, FailurePolicy, HttpTask, OnError, ProcessDef, RetryPolicy, StepKind, HTTP_METHODS,
    MAX_ATTEMPTS_PER_STEP, MAX_FOREACH_CONCURRENCY, MAX_STEPS_PER_PROCESS,
};
use crate::expr;

/// One problem in a definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub step: Option<String>,
    pub problem: String,
}

/// All problems found in one definition file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics {
    pub file: String,
    pub items: Vec<Diagnostic>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &d.step {
                Some(step) => write!(f, "{}: step '{}': {}", self.file, step, d.problem)?,
                None => write!(f, "{}: {}", self.file, d.problem)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Validates `def`. `agents`, when given, is the set of agent names the registry knows.
pub fn validate(
    file: &str,
    def: &ProcessDef,
    agents: Option<&[String]>,
) -> Result<(), Diagnostics> {
    let mut out = Vec::new();
    let mut problem = |step: Option<&str>, problem: String| {
        out.push(Diagnostic {
            step: step.map(str::to_string),
            problem,
        })
    };

    if def.name.trim().is_empty() {
        problem(None, "process name is empty".into());
    }
    if def.steps.is_empty() {
        problem(None, "process has no steps".into());
    }
    if def.steps.len() > MAX_STEPS_PER_PROCESS {
        problem(
            None,
            format!(
                "process has {} steps, over the limit of {MAX_STEPS_PER_PROCESS}",
                def.steps.len()
            ),
        );
    }

    let mut seen = BTreeSet::new();
    for step in &def.steps {
        if !is_valid_id(&step.id) {
            problem(
                Some(&step.id),
                "step id must start with a letter or '_' and hold only letters, digits, '_' and '-'"
                    .into(),
            );
        }
        if !seen.insert(step.id.as_str()) {
            problem(Some(&step.id), "duplicate step id".into());
        }
    }

    let ids: BTreeSet<&str> = def.steps.iter().map(|s| s.id.as_str()).collect();
    let compensable = def
        .steps
        .iter()
        .any(|s| matches!(&s.kind, StepKind::AgentTask(t) if t.compensate.is_some()));
    if def.on_failure == FailurePolicy::Compensate && !compensable {
        problem(
            None,
            "on_failure is compensate but no step declares a `compensate` action".into(),
        );
    }
    for step in &def.steps {
        let id = Some(step.id.as_str());
        for dep in &step.depends_on {
            if !ids.contains(dep.as_str()) {
                problem(id, format!("depends on unknown step '{dep}'"));
            }
        }
        match &step.kind {
            StepKind::AgentTask(task) => {
                let call = Call {
                    agent: &task.agent,
                    input: task.input.as_ref(),
                    timeout: task.timeout,
                    retry: &task.retry,
                };
                check_call("", &call, agents, &mut |p| problem(id, p));
                if let Some(undo) = &task.compensate {
                    let call = Call {
                        agent: &undo.agent,
                        input: undo.input.as_ref(),
                        timeout: undo.timeout,
                        retry: &undo.retry,
                    };
                    check_call("compensate.", &call, agents, &mut |p| problem(id, p));
                }
                if task.on_error == OnError::Compensate && !compensable {
                    problem(
                        id,
                        "on_error is compensate but no step declares a `compensate` action".into(),
                    );
                }
            }
            StepKind::Gateway(gateway) => {
                if gateway.routes.is_empty() && gateway.default.is_empty() {
                    problem(id, "gateway has neither routes nor a default".into());
                }
                for (i, route) in gateway.routes.iter().enumerate() {
                    if let Err(e) = expr::check_condition(&route.when) {
                        problem(id, format!("route {}: {e}", i + 1));
                    }
                    if route.to.is_empty() {
                        problem(id, format!("route {} goes nowhere (empty `to`)", i + 1));
                    }
                }
                let targets = gateway
                    .routes
                    .iter()
                    .flat_map(|r| r.to.iter())
                    .chain(gateway.default.iter());
                for target in targets {
                    match def.steps.iter().find(|s| &s.id == target) {
                        None => problem(id, format!("routes to unknown step '{target}'")),
                        Some(t) if !t.depends_on.contains(&step.id) => problem(
                            id,
                            format!(
                                "routes to '{target}', which does not depend on '{}'",
                                step.id
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
            StepKind::Foreach(each) => {
                let call = Call {
                    agent: &each.agent,
                    input: None,
                    timeout: each.timeout,
                    retry: &each.retry,
                };
                check_call("", &call, agents, &mut |p| problem(id, p));
                if let Some(input) = &each.input {
                    if let Err(e) = expr::check_template_with(input, expr::ITEM_VARIABLES) {
                        problem(id, format!("input: {e}"));
                    }
                }
                let items = serde_json::Value::String(each.items.clone());
                if !each.items.trim_start().starts_with("{{") {
                    problem(id, "items: must be a `{{ expr }}` that gives a list".into());
                } else if let Err(e) = expr::check_template(&items) {
                    problem(id, format!("items: {e}"));
                }
                if let Some(when) = &each.break_when {
                    if let Err(e) = expr::check_condition_with(when, expr::BREAK_VARIABLES) {
                        problem(id, format!("break_when: {e}"));
                    }
                }
                if each.max_concurrency == 0 || each.max_concurrency > MAX_FOREACH_CONCURRENCY {
                    problem(
                        id,
                        format!(
                            "max_concurrency must be between 1 and {MAX_FOREACH_CONCURRENCY}, got {}",
                            each.max_concurrency
                        ),
                    );
                }
                if each.on_error == OnError::Compensate && !compensable {
                    problem(
                        id,
                        "on_error is compensate but no step declares a `compensate` action".into(),
                    );
                }
            }
            StepKind::Subprocess(sub) => {
                if sub.process.trim().is_empty() {
                    problem(id, "process: names no definition".into());
                }
                if let Some(input) = &sub.input {
                    if let Err(e) = expr::check_template(input) {
                        problem(id, format!("input: {e}"));
                    }
                }
                if sub.on_error == OnError::Compensate && !compensable {
                    problem(
                        id,
                        "on_error is compensate but no step declares a `compensate` action".into(),
                    );
                }
            }
            StepKind::WaitSignal(wait) => {
                if !is_valid_id(&wait.signal) {
                    problem(
                        id,
                        "signal: a name starts with a letter or '_' and holds only letters, digits, '_' and '-'"
                            .into(),
                    );
                }
                if wait.timeout.is_some_and(|t| t.as_millis() == 0) {
                    problem(id, "timeout must be greater than zero".into());
                }
                if wait.timeout_output.is_some() && wait.timeout.is_none() {
                    problem(id, "timeout_output without a timeout".into());
                }
            }
            StepKind::Http(http) => {
                check_http(http, &mut |p| problem(id, p));
                if http.on_error == OnError::Compensate && !compensable {
                    problem(
                        id,
                        "on_error is compensate but no step declares a `compensate` action".into(),
                    );
                }
            }
            StepKind::Email(email) => {
                for (field, value) in [
                    ("to", email.to.clone()),
                    ("subject", serde_json::Value::String(email.subject.clone())),
                    ("body", serde_json::Value::String(email.body.clone())),
                ] {
                    if let Err(e) = expr::check_template(&value) {
                        problem(id, format!("{field}: {e}"));
                    }
                }
                match &email.to {
                    serde_json::Value::String(_) => {}
                    serde_json::Value::Array(list)
                        if !list.is_empty()
                            && list.len() <= super::MAX_EMAIL_RECIPIENTS
                            && list.iter().all(serde_json::Value::is_string) => {}
                    _ => problem(
                        id,
                        format!(
                            "to: one address or a list of 1 to {} addresses",
                            super::MAX_EMAIL_RECIPIENTS
                        ),
                    ),
                }
                let literal = |text: &str| !text.contains("{{");
                let addresses: Vec<&str> = match &email.to {
                    serde_json::Value::String(s) => vec![s.as_str()],
                    serde_json::Value::Array(list) => {
                        list.iter().filter_map(|v| v.as_str()).collect()
                    }
                    _ => vec![],
                };
                for address in addresses.into_iter().chain(email.from.as_deref()) {
                    if literal(address) && address.parse::<lettre::Address>().is_err() {
                        problem(id, format!("{address:?} is not an email address"));
                    }
                }
                check_policy("", email.timeout, &email.retry, &mut |p| problem(id, p));
                if email.on_error == OnError::Compensate && !compensable {
                    problem(
                        id,
                        "on_error is compensate but no step declares a `compensate` action".into(),
                    );
                }
            }
            StepKind::Transform(transform) => {
                if let Err(e) = expr::check_template(&transform.output) {
                    problem(id, format!("output: {e}"));
                }
                if transform.on_error == OnError::Compensate && !compensable {
                    problem(
                        id,
                        "on_error is compensate but no step declares a `compensate` action".into(),
                    );
                }
            }
            StepKind::Timer(timer) => match (&timer.duration, &timer.until) {
                (Some(_), Some(_)) => problem(id, "timer has both `duration` and `until`".into()),
                (None, None) => problem(id, "timer needs `duration` or `until`".into()),
                (None, Some(until)) => {
                    if let Err(e) = humantime::parse_rfc3339_weak(until) {
                        problem(
                            id,
                            format!("bad `until` {until:?}: {e} (expected RFC 3339)"),
                        );
                    }
                }
                (Some(_), None) => {}
            },
        }
    }

    if let Some(output) = &def.output {
        if let Err(e) = expr::check_template(output) {
            problem(None, format!("output: {e}"));
        }
    }

    if let Some(cycle) = find_cycle(def) {
        let path = cycle.join(" -> ");
        problem(Some(&cycle[0]), format!("dependency cycle: {path}"));
    }

    if out.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics {
            file: file.to_string(),
            items: out,
        })
    }
}

/// The parts of an agent call that a step and its compensating action share.
struct Call<'a> {
    agent: &'a str,
    input: Option<&'a serde_json::Value>,
    timeout: DurationMs,
    retry: &'a RetryPolicy,
}

/// Checks one agent call; `field` prefixes each problem's field name (`compensate.`).
fn check_call(
    field: &str,
    call: &Call<'_>,
    agents: Option<&[String]>,
    problem: &mut dyn FnMut(String),
) {
    if let Some(agents) = agents {
        if !agents.iter().any(|a| a == call.agent) {
            let known = if agents.is_empty() {
                "none".to_string()
            } else {
                agents.join(", ")
            };
            let at = if field.is_empty() {
                String::new()
            } else {
                format!("{field}agent: ")
            };
            problem(format!(
                "{at}unknown agent '{}' (known: {known})",
                call.agent
            ));
        }
    }
    if let Some(input) = call.input {
        if let Err(e) = expr::check_template(input) {
            problem(format!("{field}input: {e}"));
        }
    }
    check_policy(field, call.timeout, call.retry, problem);
}

/// Checks an `http` step's request: method, URL, headers (and the secrets they name), body,
/// success statuses, timeout and retries.
fn check_http(http: &HttpTask, problem: &mut dyn FnMut(String)) {
    if !HTTP_METHODS.contains(&http.method.to_ascii_uppercase().as_str()) {
        problem(format!(
            "method: {:?} is not one of {}",
            http.method,
            HTTP_METHODS.join(", ")
        ));
    }
    let url = http.url.trim_start();
    if url.starts_with("https://") {
        problem("url: https is not supported yet (plain http:// only)".into());
    } else if !url.starts_with("http://") && !url.starts_with("{{") {
        problem(format!(
            "url: {:?} must start with http:// (or be a template)",
            http.url
        ));
    }
    if let Err(e) = expr::check_template(&serde_json::Value::String(http.url.clone())) {
        problem(format!("url: {e}"));
    }
    for (name, value) in &http.headers {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            problem(format!("headers: {name:?} is not a header name"));
        }
        if let Err(e) = crate::secrets::references(value) {
            problem(format!("headers.{name}: {e}"));
        }
        if let Err(e) = expr::check_template(&serde_json::Value::String(value.clone())) {
            problem(format!("headers.{name}: {e}"));
        }
    }
    let elsewhere = http.url.contains(crate::secrets::OPENER)
        || http
            .body
            .as_ref()
            .is_some_and(|b| b.to_string().contains(crate::secrets::OPENER));
    if elsewhere {
        problem("secrets (`${secrets.NAME}`) may appear in header values only".into());
    }
    if let Some(body) = &http.body {
        if let Err(e) = expr::check_template(body) {
            problem(format!("body: {e}"));
        }
    }
    for status in &http.success {
        if status.matches(200).is_none() {
            problem(format!(
                "success: {status} is neither a status (100 to 599) nor a class like \"2xx\""
            ));
        }
    }
    check_policy("", http.timeout, &http.retry, problem);
}

/// Checks a call's timeout and retry policy; `field` prefixes each problem's field name.
fn check_policy(
    field: &str,
    timeout: DurationMs,
    retry: &RetryPolicy,
    problem: &mut dyn FnMut(String),
) {
    if retry.max_attempts == 0 || retry.max_attempts > MAX_ATTEMPTS_PER_STEP {
        problem(format!(
            "{field}retry.max_attempts must be between 1 and {MAX_ATTEMPTS_PER_STEP}, got {}",
            retry.max_attempts
        ));
    }
    if !(retry.backoff.is_finite() && retry.backoff >= 1.0) {
        problem(format!(
            "{field}retry.backoff must be at least 1.0, got {}",
            retry.backoff
        ));
    }
    if !(0.0..=1.0).contains(&retry.jitter) {
        problem(format!(
            "{field}retry.jitter must be between 0 and 1, got {}",
            retry.jitter
        ));
    }
    if retry.max_delay < retry.initial_delay {
        problem(format!(
            "{field}retry.max_delay ({}) is shorter than retry.initial_delay ({})",
            retry.max_delay, retry.initial_delay
        ));
    }
    if timeout.as_millis() == 0 {
        problem(format!("{field}timeout must be greater than zero"));
    }
}

fn is_valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Finds one dependency cycle and returns it as a closed path (`a, b, c, a`). Edges to unknown
/// steps are ignored here; they are reported on their own.
fn find_cycle(def: &ProcessDef) -> Option<Vec<String>> {
    let deps: BTreeMap<&str, Vec<&str>> = def
        .steps
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                s.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unseen,
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = deps.keys().map(|k| (*k, Mark::Unseen)).collect();
    // Iterative DFS: a deep chain must not overflow the stack.
    for start in def.steps.iter().map(|s| s.id.as_str()) {
        if marks[start] != Mark::Unseen {
            continue;
        }
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::OnPath);
        while let Some((node, next)) = path.last().copied() {
            let edges = &deps[node];
            if next < edges.len() {
                path.last_mut().expect("path is not empty").1 += 1;
                let dep = edges[next];
                match marks.get(dep).copied() {
                    None | Some(Mark::Done) => {}
                    Some(Mark::Unseen) => {
                        marks.insert(dep, Mark::OnPath);
                        path.push((dep, 0));
                    }
                    Some(Mark::OnPath) => {
                        // Edges point from a step to what it depends on; print the cycle in
                        // execution order (dependency first), closing on its first step.
                        let from = path.iter().position(|(n, _)| *n == dep).expect("on path");
                        let mut cycle: Vec<String> = path[from..]
                            .iter()
                            .rev()
                            .map(|(n, _)| n.to_string())
                            .collect();
                        // Start at the earliest-defined member, so the message is stable.
                        let first = (0..cycle.len())
                            .min_by_key(|&i| def.position(&cycle[i]))
                            .expect("cycle is not empty");
                        cycle.rotate_left(first);
                        cycle.push(cycle[0].clone());
                        return Some(cycle);
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{parse, Format};

    fn check(yaml: &str) -> Result<(), Diagnostics> {
        let def = parse("p.yaml", yaml, Format::Yaml)?;
        validate("p.yaml", &def, Some(&["echo".to_string()]))
    }

    fn problems(yaml: &str) -> String {
        check(yaml).unwrap_err().to_string()
    }

    #[test]
    fn http_and_transform_steps_are_checked_field_by_field() {
        check(
            r#"
name: p
steps:
  - id: get
    type: http
    url: "http://svc:80/orders/{{input.id}}"
    headers: { authorization: "Bearer ${secrets.TOKEN}" }
    success: [200, "4xx"]
  - id: shape
    type: transform
    depends_on: [get]
    output: { status: "{{steps.get.output.status}}" }
"#,
        )
        .unwrap();
        let out = problems(
            r#"
name: p
steps:
  - id: get
    type: http
    method: FETCH
    url: "https://svc/x"
    headers: { "bad header": x, authorization: "Bearer ${secrets.bad-name}" }
    body: { token: "${secrets.TOKEN}" }
    success: [700, "2yy"]
    timeout: 0s
  - id: other
    type: http
    url: "svc/{{input.x"
  - id: shape
    type: transform
    output: "{{ steps.get.output. }}"
"#,
        );
        for expected in [
            "step 'get': method: \"FETCH\" is not one of GET, POST, PUT, PATCH, DELETE, HEAD",
            "step 'get': url: https is not supported yet",
            "step 'get': headers: \"bad header\" is not a header name",
            "step 'get': headers.authorization: `${secrets.bad-name}`",
            "step 'get': secrets (`${secrets.NAME}`) may appear in header values only",
            "step 'get': success: 700 is neither",
            "step 'get': success: \"2yy\" is neither",
            "step 'get': timeout must be greater than zero",
            "step 'other': url: \"svc/{{input.x\" must start with http://",
            "step 'shape': output: expression",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        }
    }

    #[test]
    fn email_steps_are_checked_field_by_field() {
        check(
            r#"
name: p
steps:
  - id: mail
    type: email
    to: ["ops@example.com", "{{input.owner}}"]
    subject: "Order {{input.id}}"
    body: "Done."
"#,
        )
        .unwrap();
        let out = problems(
            r#"
name: p
steps:
  - id: mail
    type: email
    to: "not an address"
    from: "also@@bad"
    subject: "{{input."
    body: "x"
    timeout: 0s
  - id: many
    type: email
    to: []
    subject: s
    body: b
"#,
        );
        for expected in [
            "step 'mail': \"not an address\" is not an email address",
            "step 'mail': \"also@@bad\" is not an email address",
            "step 'mail': subject: template",
            "step 'mail': timeout must be greater than zero",
            "step 'many': to: one address or a list of 1 to 50 addresses",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        }
    }

    #[test]
    fn valid_definition_passes() {
        check(
            "name: p\nsteps:\n  - {id: a, type: agent_task, agent: echo}\n  - {id: b, type: timer, duration: 5s, depends_on: [a]}\n",
        )
        .unwrap();
    }

    #[test]
    fn cycle_prints_its_path() {
        let out = problems(
            "name: p\nsteps:\n  - {id: a, type: agent_task, agent: echo, depends_on: [c]}\n  - {id: b, type: agent_task, agent: echo, depends_on: [a]}\n  - {id: c, type: agent_task, agent: echo, depends_on: [b]}\n",
        );
        assert!(out.contains("dependency cycle: a -> b -> c -> a"), "{out}");
        assert!(out.starts_with("p.yaml: step 'a'"), "{out}");
    }

    #[test]
    fn unknown_dependency_duplicate_and_agent_name_the_step() {
        let out = problems(
            "name: p\nsteps:\n  - {id: a, type: agent_task, agent: echo, depends_on: [ghost]}\n  - {id: a, type: agent_task, agent: nobody}\n",
        );
        assert!(
            out.contains("p.yaml: step 'a': depends on unknown step 'ghost'"),
            "{out}"
        );
        assert!(out.contains("p.yaml: step 'a': duplicate step id"), "{out}");
        assert!(
            out.contains("unknown agent 'nobody' (known: echo)"),
            "{out}"
        );
    }

    #[test]
    fn bad_duration_names_the_step() {
        let out = problems("name: p\nsteps:\n  - {id: wait, type: timer, duration: 5 parsecs}\n");
        assert!(out.contains("step 'wait'"), "{out}");
        assert!(out.contains("bad duration"), "{out}");
    }

    #[test]
    fn bad_expression_names_the_step() {
        let out = problems(
            "name: p\nsteps:\n  - {id: a, type: agent_task, agent: echo, input: {x: '{{input.x +}}'}}\n",
        );
        assert!(out.contains("step 'a': input: expression"), "{out}");
    }

    #[test]
    fn gateway_target_must_depend_on_gateway() {
        let out = problems(
            "name: p\nsteps:\n  - id: g\n    type: gateway\n    routes: [{when: 'input.x > 1', to: [a]}]\n    default: [b]\n  - {id: a, type: agent_task, agent: echo, depends_on: [g]}\n  - {id: b, type: agent_task, agent: echo}\n",
        );
        assert!(
            out.contains("step 'g': routes to 'b', which does not depend on 'g'"),
            "{out}"
        );
    }

    #[test]
    fn unknown_field_is_rejected_with_the_step() {
        let out = problems("name: p\nsteps:\n  - {id: a, type: agent_task, agnet: echo}\n");
        assert!(out.contains("step 'a'"), "{out}");
        assert!(out.contains("agnet"), "{out}");
    }
}
