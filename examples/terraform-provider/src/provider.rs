//! The `tfplugin6.Provider` service: the resource `kv_item { key, value }`
//! (a `kv_<key>` file in the working directory; changing `key` replaces
//! it) and the data source `kv_item { key }` → `value`.
//!
//! File work runs on a [`BlockingPool`], never on gRPC's thread:
//! OpenTofu plans and applies resources in parallel over its one
//! connection, and `StopProvider` must be answered while an apply runs.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use goplugin::grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
use goplugin::protobuf::MessageField;
use goplugin::{BlockingPool, answer};
use kv_plugin::store::Store;

use crate::schema;
use crate::tfplugin6::{
    AttributePath, Diagnostic, DynamicValue, apply_resource_change, attribute_path,
    configure_provider, diagnostic, get_functions, get_metadata, get_provider_schema,
    import_resource_state, plan_resource_change, read_data_source, read_resource, stop_provider,
    upgrade_resource_state, validate_data_resource_config, validate_provider_config,
    validate_resource_config,
};
use crate::tfplugin6_grpc::Provider;
use crate::value::{self, Attr, Item};

/// The one resource and data source type.
pub const KV_ITEM: &str = "kv_item";

/// The provider's state, shared by the service's clones.
#[derive(Clone)]
pub struct KvProvider {
    store: Arc<Store>,
    pool: BlockingPool,
    stop: Arc<StopSignal>,
    /// How long each apply waits before writing (`KV_PROVIDER_APPLY_DELAY_MS`,
    /// 0 by default): a slow apply to show `StopProvider` at work.
    apply_delay: Duration,
}

/// `StopProvider` has been called: applies in progress give up.
#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl StopSignal {
    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Waits `delay`, or less when stopped: whether it was stopped.
    fn wait(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stopped = self
                .changed
                .wait_timeout(stopped, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *stopped
    }
}

impl KvProvider {
    /// The diagnostics for a `kv_item` configuration, resource or data
    /// source alike; another type is `INVALID_ARGUMENT`.
    fn validate(
        &self,
        type_name: &str,
        config: &DynamicValue,
    ) -> Result<Vec<Diagnostic>, RpcStatus> {
        if type_name != KV_ITEM {
            return Err(unknown_type(type_name));
        }
        Ok(check_config(&self.store, config))
    }

    /// A provider storing in `store`, with `workers` pool threads.
    pub fn new(store: Store, workers: usize, apply_delay: Duration) -> KvProvider {
        KvProvider {
            store: Arc::new(store),
            pool: BlockingPool::new(workers),
            stop: Arc::default(),
            apply_delay,
        }
    }
}

/// An error diagnostic.
fn error(summary: impl Into<String>, detail: impl Into<String>) -> Diagnostic {
    Diagnostic {
        severity: diagnostic::Severity::ERROR.into(),
        summary: summary.into(),
        detail: detail.into(),
        ..Diagnostic::default()
    }
}

/// The path of one top-level attribute.
fn path(attribute: &str) -> AttributePath {
    let mut step = attribute_path::Step::new();
    step.set_attribute_name(attribute.into());
    AttributePath {
        steps: vec![step],
        ..AttributePath::default()
    }
}

/// An error diagnostic on `attribute`.
fn attribute_error(attribute: &str, summary: &str, detail: String) -> Diagnostic {
    Diagnostic {
        attribute: MessageField::some(path(attribute)),
        ..error(summary, detail)
    }
}

/// Diagnostics for a `kv_item` configuration: a key that is not one plain
/// file name (kv-plugin's rules) is an error on `key`, never a crash.
fn check_config(store: &Store, config: &DynamicValue) -> Vec<Diagnostic> {
    match value::decode(config) {
        Err(reason) => vec![error("Unreadable configuration", reason)],
        Ok(Some(Item {
            key: Attr::Known(key),
            ..
        })) => match store.file_name(&key) {
            Ok(_) => Vec::new(),
            Err(status) => vec![attribute_error(
                "key",
                "Invalid key",
                status.message().to_string(),
            )],
        },
        // Null or unknown until apply: checked when it is known.
        Ok(_) => Vec::new(),
    }
}

/// A key's stored value as a string attribute.
fn read_value(store: &Store, key: &str) -> Result<Option<String>, Diagnostic> {
    match store.get(key) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
            error(
                "Value is not text",
                format!("the file for key {key:?} does not hold UTF-8 text"),
            )
        }),
        Err(status) if status.code() == RpcStatusCode::NOT_FOUND => Ok(None),
        Err(status) => Err(error("Cannot read the value", status.message().to_string())),
    }
}

/// The known key of an item, or an error diagnostic.
fn known_key(item: &Item, what: &str) -> Result<String, Diagnostic> {
    item.key
        .known()
        .map(str::to_string)
        .ok_or_else(|| error(format!("No key in the {what}"), "key must be known"))
}

fn unknown_type(type_name: &str) -> RpcStatus {
    RpcStatus::with_message(
        RpcStatusCode::INVALID_ARGUMENT,
        format!("unknown type {type_name:?}: this provider has only {KV_ITEM}"),
    )
}

impl Provider for KvProvider {
    fn get_metadata(
        &mut self,
        ctx: RpcContext<'_>,
        _: get_metadata::Request,
        sink: UnarySink<get_metadata::Response>,
    ) {
        answer(&ctx, sink, Ok(schema::metadata()));
    }

    fn get_provider_schema(
        &mut self,
        ctx: RpcContext<'_>,
        _: get_provider_schema::Request,
        sink: UnarySink<get_provider_schema::Response>,
    ) {
        answer(&ctx, sink, Ok(schema::provider_schema()));
    }

    fn validate_provider_config(
        &mut self,
        ctx: RpcContext<'_>,
        _: validate_provider_config::Request,
        sink: UnarySink<validate_provider_config::Response>,
    ) {
        answer(&ctx, sink, Ok(Default::default()));
    }

    fn validate_resource_config(
        &mut self,
        ctx: RpcContext<'_>,
        req: validate_resource_config::Request,
        sink: UnarySink<validate_resource_config::Response>,
    ) {
        let checked = self.validate(&req.type_name, &req.config);
        let response = checked.map(|diagnostics| validate_resource_config::Response {
            diagnostics,
            ..Default::default()
        });
        answer(&ctx, sink, response);
    }

    fn validate_data_resource_config(
        &mut self,
        ctx: RpcContext<'_>,
        req: validate_data_resource_config::Request,
        sink: UnarySink<validate_data_resource_config::Response>,
    ) {
        let checked = self.validate(&req.type_name, &req.config);
        let response = checked.map(|diagnostics| validate_data_resource_config::Response {
            diagnostics,
            ..Default::default()
        });
        answer(&ctx, sink, response);
    }

    /// Schema version 0 is the only one: the stored JSON is re-encoded.
    fn upgrade_resource_state(
        &mut self,
        ctx: RpcContext<'_>,
        req: upgrade_resource_state::Request,
        sink: UnarySink<upgrade_resource_state::Response>,
    ) {
        let raw = req.raw_state.into_option().unwrap_or_default();
        let item = if !raw.json.is_empty() {
            serde_json::from_slice(&raw.json)
                .map_err(|e| format!("the stored state is not JSON: {e}"))
                .and_then(|json| value::from_json(&json))
        } else {
            let attr = |name: &str| match raw.flatmap.get(name) {
                Some(text) => Attr::Known(text.clone()),
                None => Attr::Null,
            };
            Ok(Some(Item {
                key: attr("key"),
                value: attr("value"),
            }))
        };
        let response = match item {
            Ok(item) => upgrade_resource_state::Response {
                upgraded_state: MessageField::some(value::encode(item.as_ref())),
                ..Default::default()
            },
            Err(reason) => upgrade_resource_state::Response {
                diagnostics: vec![error("Cannot upgrade the stored state", reason)],
                ..Default::default()
            },
        };
        answer(&ctx, sink, Ok(response));
    }

    fn configure_provider(
        &mut self,
        ctx: RpcContext<'_>,
        _: configure_provider::Request,
        sink: UnarySink<configure_provider::Response>,
    ) {
        answer(&ctx, sink, Ok(Default::default()));
    }

    /// Refresh: the file's content, or no resource when the file is gone
    /// (deleted by hand: the next plan creates it again).
    fn read_resource(
        &mut self,
        _: RpcContext<'_>,
        req: read_resource::Request,
        sink: UnarySink<read_resource::Response>,
    ) {
        let store = Arc::clone(&self.store);
        self.pool.unary(sink, move || {
            let state = req.current_state.into_option().unwrap_or_default();
            let refreshed = value::decode(&state)
                .map_err(|reason| error("Unreadable state", reason))
                .and_then(|item| match item {
                    None => Ok(None),
                    Some(item) => {
                        let key = known_key(&item, "state")?;
                        let found = read_value(&store, &key)?;
                        Ok(found.map(|value| Item::known(&key, &value)))
                    }
                });
            Ok(match refreshed {
                Ok(item) => read_resource::Response {
                    new_state: MessageField::some(value::encode(item.as_ref())),
                    private: req.private,
                    ..Default::default()
                },
                Err(diagnostic) => read_resource::Response {
                    new_state: MessageField::some(state),
                    diagnostics: vec![diagnostic],
                    ..Default::default()
                },
            })
        });
    }

    /// The plan is the proposed state (nothing is computed); a new `key`
    /// means a new file: replace.
    fn plan_resource_change(
        &mut self,
        ctx: RpcContext<'_>,
        req: plan_resource_change::Request,
        sink: UnarySink<plan_resource_change::Response>,
    ) {
        if req.type_name != KV_ITEM {
            return answer(&ctx, sink, Err(unknown_type(&req.type_name)));
        }
        let proposed = req.proposed_new_state.into_option().unwrap_or_default();
        let prior = req.prior_state.into_option().unwrap_or_default();
        let mut response = plan_resource_change::Response::default();
        match (value::decode(&prior), value::decode(&proposed)) {
            (Ok(prior), Ok(planned)) => {
                if let (Some(prior), Some(planned)) = (&prior, &planned)
                    && prior.key != planned.key
                {
                    response.requires_replace.push(path("key"));
                }
                let config = req.config.into_option().unwrap_or_default();
                response.diagnostics = check_config(&self.store, &config);
                response.planned_state = MessageField::some(proposed);
                response.planned_private = req.prior_private;
            }
            (Err(reason), _) | (_, Err(reason)) => {
                response.diagnostics.push(error("Unreadable plan", reason));
            }
        }
        answer(&ctx, sink, Ok(response));
    }

    /// Writes (or, for a destroy, removes) the file; the new state is the
    /// planned one.
    fn apply_resource_change(
        &mut self,
        _: RpcContext<'_>,
        req: apply_resource_change::Request,
        sink: UnarySink<apply_resource_change::Response>,
    ) {
        let store = Arc::clone(&self.store);
        let stop = Arc::clone(&self.stop);
        let delay = self.apply_delay;
        self.pool.unary(sink, move || {
            let planned = req.planned_state.into_option().unwrap_or_default();
            let prior = req.prior_state.into_option().unwrap_or_default();
            let applied = apply(&store, &stop, delay, &prior, &planned);
            Ok(match applied {
                Ok(()) => apply_resource_change::Response {
                    new_state: MessageField::some(planned),
                    private: req.planned_private,
                    ..Default::default()
                },
                Err(diagnostic) => apply_resource_change::Response {
                    // Nothing changed: the prior state stands.
                    new_state: MessageField::some(prior),
                    diagnostics: vec![diagnostic],
                    ..Default::default()
                },
            })
        });
    }

    /// `tofu import kv_item.NAME KEY`: the file's current content.
    fn import_resource_state(
        &mut self,
        _: RpcContext<'_>,
        req: import_resource_state::Request,
        sink: UnarySink<import_resource_state::Response>,
    ) {
        let store = Arc::clone(&self.store);
        self.pool.unary(sink, move || {
            let key = req.id;
            let found = match store.file_name(&key) {
                Err(status) => Err(error("Invalid key", status.message().to_string())),
                Ok(_) => read_value(&store, &key),
            };
            let mut response = import_resource_state::Response::default();
            match found {
                Ok(Some(value)) => {
                    response
                        .imported_resources
                        .push(import_resource_state::ImportedResource {
                            type_name: KV_ITEM.into(),
                            state: MessageField::some(value::encode(Some(&Item::known(
                                &key, &value,
                            )))),
                            ..Default::default()
                        });
                }
                Ok(None) => response.diagnostics.push(error(
                    "Cannot import a missing value",
                    format!("there is no value for key {key:?} (no kv_{key} file)"),
                )),
                Err(diagnostic) => response.diagnostics.push(diagnostic),
            }
            Ok(response)
        });
    }

    fn read_data_source(
        &mut self,
        _: RpcContext<'_>,
        req: read_data_source::Request,
        sink: UnarySink<read_data_source::Response>,
    ) {
        let store = Arc::clone(&self.store);
        self.pool.unary(sink, move || {
            let config = req.config.into_option().unwrap_or_default();
            let read = value::decode(&config)
                .map_err(|reason| error("Unreadable configuration", reason))
                .and_then(|item| {
                    let item = item.ok_or_else(|| error("No configuration", ""))?;
                    let key = known_key(&item, "configuration")?;
                    match read_value(&store, &key)? {
                        Some(value) => Ok(Item::known(&key, &value)),
                        None => Err(attribute_error(
                            "key",
                            "No such value",
                            format!("there is no value for key {key:?} (no kv_{key} file)"),
                        )),
                    }
                });
            Ok(match read {
                Ok(item) => read_data_source::Response {
                    state: MessageField::some(value::encode(Some(&item))),
                    ..Default::default()
                },
                Err(diagnostic) => read_data_source::Response {
                    diagnostics: vec![diagnostic],
                    ..Default::default()
                },
            })
        });
    }

    fn get_functions(
        &mut self,
        ctx: RpcContext<'_>,
        _: get_functions::Request,
        sink: UnarySink<get_functions::Response>,
    ) {
        answer(&ctx, sink, Ok(Default::default()));
    }

    /// Answered at once, on gRPC's thread, while applies run on the pool:
    /// they give up at their next wait.
    fn stop_provider(
        &mut self,
        ctx: RpcContext<'_>,
        _: stop_provider::Request,
        sink: UnarySink<stop_provider::Response>,
    ) {
        self.stop.stop();
        goplugin::log::info!("StopProvider: applies in progress give up");
        answer(&ctx, sink, Ok(Default::default()));
    }
}

/// One apply: a destroy removes the prior key's file, a create or update
/// writes the planned key's, after the configured delay (unless stopped).
fn apply(
    store: &Store,
    stop: &StopSignal,
    delay: Duration,
    prior: &DynamicValue,
    planned: &DynamicValue,
) -> Result<(), Diagnostic> {
    let unreadable = |reason| error("Unreadable apply request", reason);
    let planned = value::decode(planned).map_err(unreadable)?;
    if !delay.is_zero() && stop.wait(delay) {
        return Err(error(
            "Stopped",
            "StopProvider was called (Ctrl-C) before this apply wrote anything",
        ));
    }
    let Some(planned) = planned else {
        let prior = value::decode(prior).map_err(unreadable)?;
        if let Some(prior) = prior {
            let key = known_key(&prior, "prior state")?;
            store
                .delete(&key)
                .map_err(|status| error("Cannot delete the value", status.message().to_string()))?;
        }
        return Ok(());
    };
    let key = known_key(&planned, "plan")?;
    let text = planned
        .value
        .known()
        .ok_or_else(|| attribute_error("value", "No value", "value must be known".into()))?;
    store
        .put(&key, text.as_bytes().to_vec())
        .map_err(|status| match status.code() {
            RpcStatusCode::INVALID_ARGUMENT => {
                attribute_error("key", "Invalid key", status.message().to_string())
            }
            _ => error("Cannot write the value", status.message().to_string()),
        })
}
