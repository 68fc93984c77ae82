//! Tenants: [`Tenant`] is the engine seen by one tenant. Everything it creates belongs to that
//! tenant (executions, registered definitions, and the children of its sub-processes), and
//! every read and change goes through an ownership check: another tenant's execution is
//! reported as unknown, exactly like one that does not exist, so nothing about it leaks. The
//! plain [`Engine`] methods act for [`DEFAULT_TENANT`].
//!
//! Every change made through a `Tenant` (create, start, pause, resume, cancel, signal) is also
//! recorded in the audit history with who made it ([`Tenant::acting_as`]) and the last event
//! it left; [`Tenant::audit`] reads it back. A retention purge removes it with the execution.

use serde_json::Value;

use crate::core::{Execution, DEFAULT_TENANT};
use crate::driver::{Engine, Error, ExecutionHandle};
use crate::event::EventRecord;
use crate::store::{AuditEntry, DefinitionInfo, ExecutionQuery, ExecutionSummary, SignalRequest};

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
        let valid = !tenant.is_empty()
            && tenant.len() <= MAX_TENANT_BYTES
            && tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
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

    /// Records a change made to `id`, with the event it left last.
    async fn audit_change(
        &self,
        id: &str,
        action: &str,
        detail: Option<String>,
    ) -> Result<(), Error> {
        let store = self.engine.store();
        let last_seq = store
            .load(id)
            .await?
            .map_or(0, |e| e.next_seq.saturating_sub(1));
        let entry = AuditEntry {
            execution_id: id.to_string(),
            tenant: self.name.clone(),
            actor: self.actor.clone(),
            action: action.to_string(),
            detail,
            at_ms: self.engine.clock().now_ms(),
            last_seq,
        };
        Ok(store.record_audit(&entry).await?)
    }

    /// Who changed `id` and how, oldest first (this tenant's executions only).
    pub async fn audit(&self, id: &str) -> Result<Vec<AuditEntry>, Error> {
        self.own(id).await?;
        Ok(self.engine.store().audit(id).await?)
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

    /// Creates execution `id` from this tenant's definition `name`; returns its version.
    pub async fn create(
        &self,
        id: &str,
        name: &str,
        version: Option<u32>,
        input: Value,
    ) -> Result<u32, Error> {
        let version_made = self
            .engine
            .create_registered_in(&self.name, id, name, version, input)
            .await?;
        let detail = format!("{name} v{version_made}");
        self.audit_change(id, "create", Some(detail)).await?;
        Ok(version_made)
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
        let handle = self.engine.start(id).await?;
        self.audit_change(id, "start", None).await?;
        Ok(handle)
    }

    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        self.own(id).await?;
        self.engine.pause(id).await?;
        self.audit_change(id, "pause", None).await
    }

    pub async fn resume(&self, id: &str) -> Result<(), Error> {
        self.own(id).await?;
        self.engine.resume(id).await?;
        self.audit_change(id, "resume", None).await
    }

    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<(), Error> {
        self.own(id).await?;
        self.engine.cancel(id, reason.clone()).await?;
        self.audit_change(id, "cancel", reason).await
    }

    pub async fn signal(&self, id: &str, signal: SignalRequest) -> Result<(), Error> {
        self.own(id).await?;
        let detail = format!("{} ({})", signal.name, signal.id);
        self.engine.signal(id, signal).await?;
        self.audit_change(id, "signal", Some(detail)).await
    }
}
