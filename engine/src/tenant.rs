//! Tenants: [`Tenant`] is the engine seen by one tenant. Everything it creates belongs to that
//! tenant (executions, registered definitions, and the children of its sub-processes), and
//! every read and change goes through an ownership check: another tenant's execution is
//! reported as unknown, exactly like one that does not exist, so nothing about it leaks. The
//! plain [`Engine`] methods act for [`DEFAULT_TENANT`].
//!
//! Every change made through a `Tenant` (start, pause, resume, cancel, signal, reset) is
//! audited: an
//! [`DomainEvent::Audit`] naming who ([`Tenant::acting_as`]) and what is committed in the same
//! transition as the change, just before the events it caused, so the audit history can never
//! lose a change nor record one that did not happen (a no-op request is not recorded).
//! [`Tenant::audit`] reads it back; a creation is recorded by the execution row itself (its
//! tenant and `created_at_ms`). A retention purge removes it with the execution.

/// One audited change, as [`Tenant::audit`] returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The `seq` of the `Audit` event; the change's own events follow it.
    pub seq: u64,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

use serde_json::Value;

use crate::core::{Execution, DEFAULT_TENANT};
use crate::driver::{Engine, Error, ExecutionHandle, Reset};
use crate::event::EventRecord;
use serde::{Deserialize, Serialize};

use crate::core::Input;
use crate::driver::signal_input;
use crate::event::DomainEvent;
use crate::store::{DefinitionInfo, ExecutionQuery, ExecutionSummary, SignalRequest};

/// Longest tenant name.
pub const MAX_TENANT_BYTES: usize = 64;

/// The engine, scoped to one tenant. Cheap to clone.
#[derive(Clone)]
pub struct Tenant {
    engine: Engine,
    name: String,
    /// Who is acting, for the audit history.
    actor: Option<String>,
}

impl Engine {
    /// This engine as seen by `tenant` (1 to [`MAX_TENANT_BYTES`] letters, digits, `_`, `-`).
    pub fn tenant(&self, tenant: &str) -> Result<Tenant, Error> {
        if !crate::name::is_plain(tenant, MAX_TENANT_BYTES) {
            return Err(Error::BadTenant(tenant.to_string()));
        }
        Ok(Tenant {
            engine: self.clone(),
            name: tenant.to_string(),
            actor: None,
        })
    }

    /// The default tenant's view.
    pub fn default_tenant(&self) -> Tenant {
        Tenant {
            engine: self.clone(),
            name: DEFAULT_TENANT.to_string(),
            actor: None,
        }
    }
}

impl Tenant {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same view, recording `actor` (a user, a service) in the audit history of every
    /// change it makes.
    pub fn acting_as(&self, actor: &str) -> Tenant {
        Tenant {
            actor: Some(actor.to_string()),
            ..self.clone()
        }
    }

    /// Registers a definition in this tenant's registry (see [`Engine::register_definition`]).
    pub async fn register_definition(
        &self,
        process: crate::definition::ProcessDef,
    ) -> Result<u32, Error> {
        self.engine
            .register_definition_in(&self.name, process)
            .await
    }

    pub async fn set_current_definition(&self, name: &str, version: u32) -> Result<(), Error> {
        Ok(self
            .engine
            .store()
            .set_current_definition(&self.name, name, version)
            .await?)
    }

    pub async fn definitions(&self) -> Result<Vec<DefinitionInfo>, Error> {
        Ok(self.engine.store().definitions(&self.name).await?)
    }

    /// Registers a schedule whose runs (of this tenant's definition `process`, its current
    /// version now) belong to this tenant (see [`Engine::register_schedule`]).
    pub async fn register_schedule(
        &self,
        name: &str,
        spec: crate::schedule::ScheduleSpec,
        process: &str,
        input: Value,
    ) -> Result<(), Error> {
        let def = self.engine.registered(&self.name, process, None).await?;
        self.engine
            .register_schedule_in(&self.name, name, spec, def, input)
            .await
    }

    /// Creates execution `id` from this tenant's definition `name`; returns its version.
    pub async fn create(
        &self,
        id: &str,
        name: &str,
        version: Option<u32>,
        input: Value,
    ) -> Result<u32, Error> {
        self.engine
            .create_registered_in(&self.name, id, name, version, input)
            .await
    }

    /// Creates an execution of this tenant's definition `name` under idempotency `key`, or
    /// finds the one the key already created (see [`Engine::create_idempotent_in`]); returns
    /// its id and whether this call created it.
    pub async fn create_idempotent(
        &self,
        key: &str,
        name: &str,
        version: Option<u32>,
        input: Value,
    ) -> Result<(String, bool), Error> {
        self.engine
            .create_idempotent_in(&self.name, key, name, version, input)
            .await
    }

    /// Creates an execution of this tenant's definition `name` under a fresh id.
    pub async fn create_new(
        &self,
        name: &str,
        version: Option<u32>,
        input: Value,
    ) -> Result<String, Error> {
        let id = self.engine.fresh_execution_id();
        self.create(&id, name, version, input).await?;
        Ok(id)
    }

    /// The execution, if it exists and is this tenant's.
    pub async fn load(&self, id: &str) -> Result<Option<Execution>, Error> {
        Ok(self
            .engine
            .store()
            .load(id)
            .await?
            .filter(|e| e.tenant == self.name))
    }

    /// Who changed `id` and how, oldest first (this tenant's executions only): its
    /// [`DomainEvent::Audit`] events.
    pub async fn audit(&self, id: &str) -> Result<Vec<AuditEntry>, Error> {
        let events = self.events(id).await?;
        Ok(events
            .into_iter()
            .filter_map(|e| match e.event {
                DomainEvent::Audit {
                    actor,
                    action,
                    detail,
                } => Some(AuditEntry {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    actor,
                    action,
                    detail,
                }),
                _ => None,
            })
            .collect())
    }

    /// `input`, audited as `action` by this view's actor.
    fn audited(&self, action: &str, detail: Option<String>, input: Input) -> Input {
        Input::Audited {
            actor: self.actor.clone(),
            action: action.to_string(),
            detail,
            input: Box::new(input),
        }
    }

    /// Fails with [`Error::UnknownExecution`] unless `id` is this tenant's.
    async fn own(&self, id: &str) -> Result<(), Error> {
        match self.load(id).await? {
            Some(_) => Ok(()),
            None => Err(Error::UnknownExecution(id.to_string())),
        }
    }

    pub async fn events(&self, id: &str) -> Result<Vec<EventRecord>, Error> {
        self.own(id).await?;
        Ok(self.engine.store().events(id).await?)
    }

    /// One page of this tenant's executions; `query.tenant` is ignored (always this one).
    pub async fn list(&self, query: ExecutionQuery) -> Result<Vec<ExecutionSummary>, Error> {
        let query = ExecutionQuery {
            tenant: self.name.clone(),
            ..query
        };
        Ok(self.engine.store().list_executions(&query).await?)
    }

    pub async fn start(&self, id: &str) -> Result<ExecutionHandle, Error> {
        self.own(id).await?;
        let start = self.audited("start", None, Input::Start);
        self.engine.start_with(id, start).await
    }

    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        self.own(id).await?;
        let pause = self.audited("pause", None, Input::Pause);
        self.engine.deliver(id, pause).await
    }

    pub async fn resume(&self, id: &str) -> Result<(), Error> {
        self.own(id).await?;
        let resume = self.audited("resume", None, Input::Resume);
        self.engine.resume_with(id, resume).await
    }

    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<(), Error> {
        self.own(id).await?;
        let cancel = self.audited("cancel", reason.clone(), Input::Cancel { reason });
        self.engine.deliver(id, cancel).await
    }

    /// Resets `id` to a checkpoint (see [`Engine::reset`]): the fork is this tenant's too; the
    /// original's cancel and the fork's start are audited as `reset`.
    pub async fn reset(&self, id: &str, reset: Reset) -> Result<ExecutionHandle, Error> {
        self.own(id).await?;
        self.engine
            .reset_audited(id, reset, Some(self.actor.clone()))
            .await
    }

    pub async fn signal(&self, id: &str, signal: SignalRequest) -> Result<(), Error> {
        self.own(id).await?;
        Engine::check_signal(&signal)?;
        let detail = format!("{} ({})", signal.name, signal.id);
        let input = self.audited("signal", Some(detail), signal_input(signal));
        self.engine.deliver(id, input).await
    }
}
