//! A start in progress: from the plugin's first stdout line to a
//! connected, healthy [`Client`].

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use grpcio::{CallOption, Environment, RpcStatusCode};

use super::output::{Event, Output, Sink};
use super::runner::Process;
use super::stdio_sync::{StdioSubscription, subscribe_stdio};
use crate::address::{self, Reach};
use crate::broker::Broker;
use crate::env::PluginEnv;
use crate::error::{Error, Result, Step};
use crate::handshake::HandshakeLine;
use crate::health;
use crate::listener::Addr;
use crate::proto::grpc_health::HealthClient;
use crate::proto::plugin::GrpcBrokerClient;
use crate::tls::{AutoMtls, HostCertificate};
use crate::transport::Transport;

/// What connecting takes from the host's configuration.
pub(super) struct Dial<'a> {
    /// The app protocol versions the host speaks.
    pub(super) versions: &'a [u32],
    /// An explicit TLS configuration.
    pub(super) tls: Option<&'a AutoMtls>,
    /// Where the host's brokered servers listen.
    pub(super) host_env: PluginEnv,
    /// The host's AutoMTLS certificate for this launch.
    pub(super) host_cert: Option<HostCertificate>,
    pub(super) grpc_env: Arc<Environment>,
    /// `SyncStdout` and `SyncStderr`.
    pub(super) sinks: (Option<Sink>, Option<Sink>),
    /// Whether a TCP address off this machine may be dialled.
    pub(super) reach: Reach,
    /// The largest message sent or accepted.
    pub(super) max_message_size: usize,
}

/// A connected plugin: what a `Client` is made of, beside its process.
pub(super) struct Connected {
    pub(super) channel: grpcio::Channel,
    pub(super) version: u32,
    pub(super) listener: Addr,
    pub(super) broker: Broker,
    pub(super) transport: Arc<Transport>,
    pub(super) stdio: Option<StdioSubscription>,
}

/// A start in progress.
pub(super) struct Starting {
    pub(super) name: String,
    pub(super) timeout: Duration,
    pub(super) process: Option<Process>,
    pub(super) output: Arc<Output>,
    pub(super) deadline: Instant,
}

impl Starting {
    fn fail(&self, step: Step, reason: String) -> Error {
        Error::client(&*self.name, step, reason)
    }

    /// Adds what the plugin printed to a start error, once its output
    /// ended (it has been killed) or shortly after.
    pub(super) fn with_output(&self, err: Error) -> Error {
        let Error::Client {
            plugin,
            step,
            reason,
            printed,
        } = err
        else {
            return err;
        };
        if self.process.is_some() {
            self.output
                .wait_closed(Instant::now() + Duration::from_millis(500));
        }
        Error::Client {
            plugin,
            step,
            reason,
            printed: if printed.is_empty() {
                self.output.tail()
            } else {
                printed
            },
        }
    }

    /// Waits for the first stdout line; kills the plugin on failure.
    pub(super) fn handshake_line(&mut self, event: &mpsc::Receiver<Event>) -> Result<String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let failure = match event.recv_timeout(left) {
            Ok(Event::Line(line)) => return Ok(line),
            Ok(Event::StdoutClosed | Event::Exited(_)) => {
                let status = self
                    .process
                    .as_ref()
                    .and_then(|p| p.wait_until(Instant::now() + Duration::from_millis(200)));
                let how = match status {
                    Some(status) => format!(" ({status})"),
                    None => " (it closed its stdout)".into(),
                };
                self.fail(
                    Step::Start,
                    format!(
                        "plugin exited before we could connect{how}: it printed no handshake \
                         line on stdout"
                    ),
                )
            }
            Err(_) => self.fail(
                Step::Start,
                format!(
                    "timeout while waiting for plugin to start: no handshake line within {:?}",
                    self.timeout
                ),
            ),
        };
        if let Some(process) = &self.process {
            process.terminate(super::STOP_GRACE);
        }
        Err(self.with_output(failure))
    }

    fn exited(&self, events: Option<&mpsc::Receiver<Event>>) -> Option<String> {
        if let Some(events) = events {
            while let Ok(event) = events.try_recv() {
                if let Event::Exited(status) = event {
                    return Some(format!("the plugin exited ({status})"));
                }
            }
        }
        None
    }

    /// From a handshake line to a connected, healthy plugin.
    pub(super) fn connect(
        &mut self,
        line: &str,
        dial: Dial<'_>,
        events: Option<&mpsc::Receiver<Event>>,
    ) -> Result<Connected> {
        // Without events there is no process: the line came from a
        // reattach configuration.
        let step = if events.is_some() {
            Step::Handshake
        } else {
            Step::Reattach
        };
        let parsed = HandshakeLine::parse(line).map_err(|e| self.fail(step, e.to_string()))?;
        // Parsed here, never handed to gRPC's target parser as it is.
        let target = address::dial_target(parsed.network.as_str(), &parsed.address, dial.reach)
            .map_err(|e| self.fail(step, e))?;
        let version = parsed.app_protocol_version;
        if !dial.versions.contains(&version) {
            return Err(self.fail(
                Step::Handshake,
                format!(
                    "incompatible API version with plugin. Plugin version: {version}, Client \
                     versions: {:?}",
                    dial.versions
                ),
            ));
        }
        let tls = match (dial.host_cert, &parsed.server_cert, dial.tls) {
            (Some(host), Some(cert), _) => Some(Arc::new(
                host.trust(cert)
                    .map_err(|e| self.fail(Step::Handshake, e.to_string()))?,
            )),
            (Some(_), None, _) => {
                return Err(self.fail(
                    Step::Handshake,
                    "the host runs AutoMTLS, and the plugin sent no certificate (handshake \
                     field 6): it does not support AutoMTLS; turn AutoMTLS off for it"
                        .into(),
                ));
            }
            (None, Some(cert), Some(tls)) => Some(Arc::new(
                tls.trusting_field(cert)
                    .map_err(|e| self.fail(Step::Handshake, e.to_string()))?,
            )),
            (None, None, Some(tls)) => Some(Arc::new(tls.clone())),
            (None, Some(_), None) => {
                return Err(self.fail(
                    Step::Handshake,
                    "the plugin sent a certificate (handshake field 6) but the host did not \
                     ask for TLS: turn AutoMTLS on, or configure TLS"
                        .into(),
                ));
            }
            (None, None, None) => None,
        };
        let listener = Addr {
            network: parsed.network.clone(),
            address: parsed.address.clone(),
        };
        let transport = Arc::new(Transport::for_host(
            dial.host_env,
            tls,
            dial.grpc_env,
            dial.max_message_size,
        ));
        let channel = transport.channel_to_plugin(&target);
        self.check_health(&channel, &listener, events)?;

        let broker = Broker::default();
        broker.attach(Arc::clone(&transport));
        if let Err(err) = broker.open_to_plugin(&GrpcBrokerClient::new(channel.clone())) {
            log::debug!("plugin {}: no broker stream: {err}", self.name);
        }
        let (stdout, stderr) = dial.sinks;
        let stdio = subscribe_stdio(&channel, stdout, stderr, self.name.clone());
        Ok(Connected {
            channel,
            version,
            listener,
            broker,
            transport,
            stdio,
        })
    }

    /// Connects and checks health `"plugin"`. The call fails at once when
    /// the connection cannot come up (nobody listens, TLS refused), and
    /// waits for it otherwise, up to the start deadline; a plugin without a
    /// health service only gets a warning, as go-plugin checks health only
    /// in `Ping`.
    fn check_health(
        &self,
        channel: &grpcio::Channel,
        listener: &Addr,
        events: Option<&mpsc::Receiver<Event>>,
    ) -> Result<()> {
        let request = health::plugin_check();
        let left = self.deadline.saturating_duration_since(Instant::now());
        let call = CallOption::default().timeout(left.max(Duration::from_millis(100)));
        let status = match HealthClient::new(channel.clone()).check_opt(&request, call) {
            Ok(_) => return Ok(()),
            Err(grpcio::Error::RpcFailure(status)) => status,
            Err(err) => return Err(self.fail(Step::HealthCheck, err.to_string())),
        };
        let at = format!("{} {}", listener.network.as_str(), listener.address);
        match status.code() {
            RpcStatusCode::UNIMPLEMENTED | RpcStatusCode::NOT_FOUND => {
                log::warn!(
                    "plugin {}: no health service for \"plugin\" ({}): Client::ping will fail",
                    self.name,
                    status.message()
                );
                Ok(())
            }
            RpcStatusCode::UNAVAILABLE => {
                let why = self.exited(events).unwrap_or_else(|| {
                    "nothing accepts connections there, or the TLS handshake failed".into()
                });
                Err(self.fail(
                    Step::Connect,
                    format!("cannot connect to {at}: {why} ({})", status.message()),
                ))
            }
            RpcStatusCode::DEADLINE_EXCEEDED => Err(self.fail(
                Step::Connect,
                format!(
                    "timeout while waiting for plugin to start: {at} did not answer within {:?}",
                    self.timeout
                ),
            )),
            _ => Err(self.fail(
                Step::HealthCheck,
                format!(
                    "the plugin at {at} answered {}: {}",
                    status.code(),
                    status.message()
                ),
            )),
        }
    }
}
