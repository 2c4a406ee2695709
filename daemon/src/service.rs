//! `clinic-relay serve`: opens the vault, starts the service set, talks to
//! systemd (READY / WATCHDOG / STOPPING), and shuts down in order on
//! SIGTERM or SIGINT: tasks drained, vault flushed and closed.

use crate::audit::AuditDraft;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::keys::{self, KeyError, MasterKey};
use crate::pms::ingest::{Identity, Ingest};
use crate::pms::listener::{self, AllowList, ListenerLimits, PlainTcp, TlsUpgrade};
use crate::vault::keyring::KeyringError;
use crate::vault::{Vault, VaultError};
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{origin}: {source}")]
    MasterKey {
        origin: &'static str,
        source: KeyError,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("cannot create {path}: {source}")]
    DevKeyDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{key} = {addr:?}: cannot listen: {source}. Fix: free the port or choose another address"
    )]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot disable core dumps: {0}")]
    Hardening(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the audit log is damaged ({0}); the daemon will not extend a log it cannot vouch for. Run `clinic-relay audit verify` and restore from backup")]
    AuditDamaged(String),
    #[error("a start-up task failed: {0}")]
    Join(String),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
    #[error(transparent)]
    ConsoleCert(#[from] crate::console::cert::CertError),
}

/// The vault as the service opens it, and the key to rotate to if the
/// config names a previous master key that still opens the data.
pub struct Opened {
    pub vault: Vault,
    pub rotate_to: Option<MasterKey>,
}

/// Reads the configured master key, creating the development key first if
/// the config asks for one and it does not exist.
pub fn load_master_key(config: &Config) -> Result<MasterKey, ServiceError> {
    if config.keys.generate_dev_key {
        if let Some(path) = &config.keys.master_key_file {
            if !path.exists() {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| ServiceError::DevKeyDir {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                MasterKey::generate()?.write_new_file(path)?;
                warn!(
                    key_file = %path.display(),
                    "DEVELOPMENT MASTER KEY GENERATED: keys.generate_dev_key is on. \
                     Never use this configuration with real patient data."
                );
            }
        }
    }
    let path = keys::locate(config.keys.master_key_file.as_deref())?;
    let origin = if config.keys.master_key_file.as_deref() == Some(path.as_path()) {
        "keys.master_key_file"
    } else {
        "systemd credential master-key"
    };
    MasterKey::load_file(&path).map_err(|source| ServiceError::MasterKey { origin, source })
}

/// What `config check` says about the master key, or why it is unusable.
pub fn check_master_key(config: &Config) -> Result<String, ServiceError> {
    let mut notes = Vec::new();
    let configured = config.keys.master_key_file.as_deref();
    match keys::locate(configured) {
        Ok(path) if Some(path.as_path()) != configured => {
            MasterKey::load_file(&path).map_err(|source| ServiceError::MasterKey {
                origin: "systemd credential master-key",
                source,
            })?;
            notes.push(format!("master key: systemd credential {}", path.display()));
        }
        Ok(path) if !path.exists() && config.keys.generate_dev_key => {
            notes.push(format!(
                "master key: development key will be generated at {}",
                path.display()
            ));
        }
        Ok(path) => {
            MasterKey::load_file(&path).map_err(|source| ServiceError::MasterKey {
                origin: "keys.master_key_file",
                source,
            })?;
            notes.push(format!(
                "master key: {} (owner-only permissions)",
                path.display()
            ));
        }
        Err(_) => notes.push(format!(
            "master key: expected from the systemd credential `{}` when run by systemd",
            keys::CREDENTIAL_NAME
        )),
    }
    if let Some(prev) = &config.keys.previous_master_key_file {
        MasterKey::load_file(prev).map_err(|source| ServiceError::MasterKey {
            origin: "keys.previous_master_key_file",
            source,
        })?;
        notes.push(format!("rotation from {} pending", prev.display()));
    }
    Ok(notes.join("; "))
}

/// Opens the vault as configured (blocking). `create` is false for the
/// offline commands, which must never create a data directory.
pub fn open_vault(config: &Config) -> Result<Opened, ServiceError> {
    open_vault_with(config, true)
}

pub fn open_existing_vault(config: &Config) -> Result<Opened, ServiceError> {
    open_vault_with(config, false)
}

fn open_vault_with(config: &Config, create: bool) -> Result<Opened, ServiceError> {
    let mk = if create {
        load_master_key(config)?
    } else {
        let path = keys::locate(config.keys.master_key_file.as_deref())?;
        MasterKey::load_file(&path).map_err(|source| ServiceError::MasterKey {
            origin: "keys.master_key_file",
            source,
        })?
    };
    let (dir, cache) = (&config.service.data_dir, config.service.cache_bytes);
    let open = |key: &MasterKey| {
        if create {
            Vault::open_with_cache(dir, key, cache)
        } else {
            Vault::open_existing_with_cache(dir, key, cache)
        }
    };
    match open(&mk) {
        Ok(vault) => Ok(Opened {
            vault,
            rotate_to: None,
        }),
        Err(first @ VaultError::Keyring(KeyringError::WrongMasterKey { .. })) => {
            let Some(prev_path) = config.keys.previous_master_key_file.as_deref() else {
                return Err(first.into());
            };
            let previous =
                MasterKey::load_file(prev_path).map_err(|source| ServiceError::MasterKey {
                    origin: "keys.previous_master_key_file",
                    source,
                })?;
            match open(&previous) {
                Ok(vault) => Ok(Opened {
                    vault,
                    rotate_to: Some(mk),
                }),
                // Neither key fits: report the configured one, not the old one.
                Err(VaultError::Keyring(KeyringError::WrongMasterKey { .. })) => Err(first.into()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Blocks the calling thread.
pub fn run(config: Config) -> Result<(), ServiceError> {
    crate::process::disable_core_dumps().map_err(ServiceError::Hardening)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("clinic-relay")
        .enable_all()
        .build()
        .map_err(ServiceError::Runtime)?;
    let grace = config.service.shutdown_timeout;
    let result = runtime.block_on(serve(config, Arc::new(SystemClock)));
    runtime.shutdown_timeout(grace);
    result
}

fn notify(states: &[NotifyState]) {
    // Outside systemd there is no NOTIFY_SOCKET and this is a no-op.
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// A task the service started, awaited by name at shutdown.
struct Named {
    name: &'static str,
    handle: JoinHandle<()>,
}

/// A started service set: what it bound, and how to stop it.
pub struct Running {
    /// The MLLP listener's actual address (port 0 in the config picks one).
    pub mllp_addr: std::net::SocketAddr,
    pub api_socket: std::path::PathBuf,
    /// The API's TCP (mutual TLS) address, when configured.
    pub api_tcp_addr: Option<std::net::SocketAddr>,
    /// The WhatsApp webhook receiver's address, when configured.
    pub webhook_addr: Option<std::net::SocketAddr>,
    /// The staff console's address, when configured.
    pub console_addr: Option<std::net::SocketAddr>,
    /// The staff console's sessions, when configured (not its whole state:
    /// that holds the read auditor, which must end with the doors).
    pub console_sessions: Option<Arc<crate::console::session::Sessions>>,
    /// Reloads the webhook receiver's TLS certificate (SIGHUP).
    pub webhook_tls: Option<crate::webhook::TlsReload>,
    pub vault: Vault,
    pub ingest: Arc<Ingest>,
    /// Wakes the PMS sender (None when no outbound endpoint is configured).
    pub pms_sender: Option<crate::pms::sender::SenderHandle>,
    /// How patient actions are shaped for the PMS.
    pub outbound: crate::pms::outbound::OutboundConfig,
    /// The WhatsApp outbox (dry-run without a token; None if its client
    /// could not be set up, which is logged).
    pub whatsapp: Option<crate::whatsapp::worker::OutboxHandle>,
    /// The WhatsApp media timers (fetch, delete at Meta, purge).
    pub wa_media: Option<crate::whatsapp::media_worker::MediaHandle>,
    /// The reminder timers (`care-scheduler`).
    pub care: crate::care::scheduler::SchedulerHandle,
    stop: watch::Sender<bool>,
    tasks: Vec<Named>,
    watchdog: Option<Watchdog>,
    clock: SharedClock,
    grace: Duration,
}

/// What `start` has bound before it commits to running.
struct Bound {
    mllp: tokio::net::TcpListener,
    mllp_addr: std::net::SocketAddr,
    api_tcp: Option<(tokio::net::TcpListener, std::net::SocketAddr)>,
    api: tokio::net::UnixListener,
    webhook: Option<(tokio::net::TcpListener, std::net::SocketAddr)>,
    console: Option<tokio::net::TcpListener>,
}

/// Binds every listener: the TCP ports first, the API socket last, so that
/// a port in use leaves no socket file behind. On any failure nothing stays
/// bound and no file of ours remains.
async fn bind_all(config: &Config) -> Result<Bound, ServiceError> {
    let mllp = tokio::net::TcpListener::bind(config.pms.mllp_listen)
        .await
        .map_err(|source| ServiceError::Bind {
            key: "pms.mllp_listen",
            addr: config.pms.mllp_listen.to_string(),
            source,
        })?;
    let mllp_addr = mllp.local_addr().map_err(ServiceError::Runtime)?;
    let api_tcp = match &config.api.tcp {
        Some((addr, _)) => {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServiceError::Bind {
                    key: "api.tcp_listen",
                    addr: addr.to_string(),
                    source,
                })?;
            let bound = tcp.local_addr().map_err(ServiceError::Runtime)?;
            Some((tcp, bound))
        }
        None => None,
    };
    let webhook = match &config.webhook {
        Some(w) => {
            let tcp = tokio::net::TcpListener::bind(w.listen)
                .await
                .map_err(|source| ServiceError::Bind {
                    key: "webhook.listen",
                    addr: w.listen.to_string(),
                    source,
                })?;
            let bound = tcp.local_addr().map_err(ServiceError::Runtime)?;
            Some((tcp, bound))
        }
        None => None,
    };
    let console = match &config.console {
        Some(c) => Some(
            tokio::net::TcpListener::bind(c.listen)
                .await
                .map_err(|source| ServiceError::Bind {
                    key: "console.listen",
                    addr: c.listen.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    // Last: `api::bind` removes its own file if it fails after creating it.
    let api = crate::api::bind(&config.api.socket)?;
    Ok(Bound {
        mllp,
        mllp_addr,
        api_tcp,
        api,
        webhook,
        console,
    })
}

/// Undoes a start that failed after the vault was opened: records why (if
/// the log can take an entry), removes the API socket file if this start
/// created it, and closes the vault so the data directory is free again.
async fn abandon_start(
    vault: Vault,
    clock: &SharedClock,
    error: &ServiceError,
    socket: Option<&std::path::Path>,
) {
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    if vault.audit_damage().is_none() {
        let failed = AuditDraft::new("system", "service.start-failed")
            .detail("version", VERSION)
            .detail("reason", error.to_string());
        if let Err(e) = vault.record_audit(clock.now(), [failed]).await {
            warn!(error = %e, "could not audit the failed start");
        }
    }
    match tokio::task::spawn_blocking(move || vault.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "closing the vault after a failed start"),
        Err(e) => warn!(error = %e, "closing the vault after a failed start"),
    }
}

/// Opens the vault and starts every listener and worker. Returns once all
/// of them are bound, so the caller can report READY. `service.start` is
/// audited only then; a start that fails after the vault opened audits
/// `service.start-failed` with the reason instead, and leaves no API socket
/// file behind.
pub async fn start(config: Config, clock: SharedClock) -> Result<Running, ServiceError> {
    // TLS material first: a bad certificate should stop us before anything
    // is opened or written.
    let mllp_tls = config
        .pms
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?;
    let api_tls = config
        .api
        .tcp
        .as_ref()
        .map(|(_, files)| crate::tls::server_config(files))
        .transpose()?;
    let webhook = config
        .webhook
        .as_ref()
        .map(crate::webhook::prepare)
        .transpose()?;
    // The console's certificate: configured, or self-signed on first start.
    let console_tls = match &config.console {
        Some(c) if !c.plain_http => {
            let files = crate::console::cert::files(c, &config.service.data_dir)?;
            Some(crate::tls::server_config(&files)?)
        }
        _ => None,
    };
    // Beside the vault's opening, not in the first message (pms/phone.rs).
    let plan = config.pms.mapping.phone_plan.clone();
    drop(tokio::task::spawn_blocking(move || {
        crate::pms::phone::warm(&plan)
    }));
    let cfg = config.clone();
    let opened = tokio::task::spawn_blocking(move || open_vault(&cfg))
        .await
        .map_err(|e| ServiceError::Join(e.to_string()))??;
    let vault = opened.vault;
    if let Some(why) = vault.audit_damage() {
        let error = ServiceError::AuditDamaged(why);
        abandon_start(vault, &clock, &error, None).await;
        return Err(error);
    }
    if let Some(copy) = &config.keys.keyring_copy {
        if let Err(e) = vault.set_keyring_mirror(copy) {
            let error = ServiceError::from(e);
            abandon_start(vault, &clock, &error, None).await;
            return Err(error);
        }
    }
    let bound = match bind_all(&config).await {
        Ok(bound) => bound,
        Err(error) => {
            abandon_start(vault, &clock, &error, None).await;
            return Err(error);
        }
    };
    // Its own OS thread: blocking work on the runtime cannot starve it.
    let watchdog = match watchdog_period()
        .map(|p| Watchdog::start(p / 2))
        .transpose()
    {
        Ok(w) => w,
        Err(source) => {
            let error = ServiceError::Runtime(source);
            drop(bound);
            abandon_start(vault, &clock, &error, Some(&config.api.socket)).await;
            return Err(error);
        }
    };
    let start = AuditDraft::new("system", "service.start").detail("version", VERSION);
    if let Err(e) = vault.record_audit(clock.now(), [start]).await {
        let error = ServiceError::from(e);
        drop(bound);
        if let Some(w) = watchdog {
            w.stop();
        }
        abandon_start(vault, &clock, &error, Some(&config.api.socket)).await;
        return Err(error);
    }
    // The console's sessions from before a restart (sealed in the vault).
    let console_sessions = match config.console.as_ref().map(|c| {
        crate::console::session::Sessions::open(
            vault.clone(),
            c.idle_timeout,
            c.absolute_timeout,
            clock.now(),
        )
    }) {
        Some(Err(e)) => {
            let error = ServiceError::from(e);
            drop(bound);
            if let Some(w) = watchdog {
                w.stop();
            }
            abandon_start(vault, &clock, &error, Some(&config.api.socket)).await;
            return Err(error);
        }
        Some(Ok(s)) => Some(Arc::new(s)),
        None => None,
    };
    Ok(spawn_all(
        config,
        clock,
        vault,
        opened.rotate_to,
        bound,
        mllp_tls,
        api_tls,
        watchdog,
        webhook,
        (console_tls, console_sessions),
    ))
}

/// Starts the tasks over what `start` bound. Nothing here can fail.
#[allow(clippy::too_many_arguments)]
fn spawn_all(
    config: Config,
    clock: SharedClock,
    vault: Vault,
    rotate_to: Option<MasterKey>,
    bound: Bound,
    mllp_tls: Option<Arc<rustls::ServerConfig>>,
    api_tls: Option<Arc<rustls::ServerConfig>>,
    watchdog: Option<Watchdog>,
    webhook: Option<crate::webhook::Prepared>,
    (console_tls, sessions): (
        Option<Arc<rustls::ServerConfig>>,
        Option<Arc<crate::console::session::Sessions>>,
    ),
) -> Running {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: Vec<Named> = Vec::new();
    // Before any input is applied: the writer's decisions reach it.
    vault.set_care(crate::care::Settings::from_config(&config));
    vault.set_wa_policy(config.policy.clone());

    if rotate_to.is_some() || vault.rotation_pending() {
        tasks.push(Named {
            name: "key-rotation",
            handle: spawn_rotation(vault.clone(), rotate_to, clock.clone()),
        });
    }

    // At shutdown, tasks are awaited in the order they are pushed below: the
    // PMS door (MLLP) first, then the local API, then the workers (PMS
    // sender, read-audit writer) that drain what the doors queued.
    let key_retention = jiff::SignedDuration::try_from(config.service.idempotency_retention)
        .unwrap_or(crate::commands::DEFAULT_KEY_RETENTION);
    let ingest = Arc::new(
        Ingest::new(
            vault.clone(),
            clock.clone(),
            Arc::new(config.pms.mapping.clone()),
            Identity {
                application: config.pms.application.clone(),
                facility: config.pms.facility.clone(),
            },
            config.pms.max_message_bytes,
        )
        .with_key_retention(key_retention),
    );
    let (read_audit, read_audit_task) =
        crate::api::read_audit::ReadAuditor::start(vault.clone(), clock.clone());
    let whatsapp_handle: std::sync::Arc<
        std::sync::OnceLock<crate::whatsapp::worker::OutboxHandle>,
    > = std::sync::Arc::default();
    let api_state = Arc::new(crate::api::ApiState {
        read_audit,
        key_retention,
        vault: vault.clone(),
        clock: clock.clone(),
        phone_plan: config.pms.mapping.phone_plan.clone(),
        authority: config.pms.mapping.assigning_authority.clone(),
        max_body_bytes: config.api.max_body_bytes,
        limits: config.api.limits,
        downloads: Default::default(),
        started: clock.now(),
        max_wait: config.api.max_long_poll,
        health: crate::api::HealthSources {
            ingest: ingest.clone(),
            data_dir: config.service.data_dir.clone(),
            master_key_file: keys::locate(config.keys.master_key_file.as_deref()).ok(),
            pms_sender_configured: config.pms.sender.is_some(),
            whatsapp: whatsapp_handle.clone(),
            webhook_configured: config.webhook.is_some(),
            whatsapp_host: crate::whatsapp::config::host_of(&config.whatsapp.api_base_url),
            whatsapp_token_file: config.whatsapp.token_path(),
        },
    });

    let Bound {
        mllp: tcp,
        mllp_addr,
        api_tcp,
        api: api_listener,
        webhook: webhook_listener,
        console: console_listener,
    } = bound;
    let limits = ListenerLimits {
        max_connections: config.pms.max_connections,
        max_frame_bytes: config.pms.max_message_bytes,
        idle_timeout: config.pms.idle_timeout,
        first_frame_timeout: config.pms.first_frame_timeout,
    };
    let allow = AllowList(config.pms.allow.clone());
    let mllp_task = match mllp_tls {
        None => tokio::spawn(listener::serve(
            tcp,
            ingest.clone(),
            Arc::new(PlainTcp),
            limits,
            allow,
            stop_rx.clone(),
        )),
        Some(server_config) => {
            let upgrade = TlsUpgrade {
                acceptor: tokio_rustls::TlsAcceptor::from(server_config),
                timeout: Duration::from_secs(10),
            };
            tokio::spawn(listener::serve(
                tcp,
                ingest.clone(),
                Arc::new(upgrade),
                limits,
                allow,
                stop_rx.clone(),
            ))
        }
    };
    tasks.push(Named {
        name: "mllp-listener",
        handle: mllp_task,
    });
    let mut api_tcp_addr = None;
    if let (Some((tcp, bound)), Some(server_config)) = (api_tcp, api_tls) {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        api_tcp_addr = Some(bound);
        info!(api_tcp = %bound, "local API also on TCP with client certificates");
        tasks.push(Named {
            name: "local-api-tcp",
            handle: tokio::spawn(crate::api::serve_tcp(
                tcp,
                acceptor,
                api_state.clone(),
                stop_rx.clone(),
            )),
        });
    }
    let mut webhook_addr = None;
    let mut webhook_tls = None;
    if let (Some(cfg), Some(prepared), Some((tcp, addr))) =
        (&config.webhook, webhook, webhook_listener)
    {
        match crate::webhook::spawn(
            cfg,
            prepared,
            tcp,
            vault.clone(),
            clock.clone(),
            stop_rx.clone(),
            key_retention,
        ) {
            Ok((handle, tls)) => {
                info!(webhook = %addr, path = %cfg.path, "WhatsApp webhook receiver listening");
                webhook_addr = Some(addr);
                webhook_tls = tls;
                tasks.push(Named {
                    name: "webhook",
                    handle,
                });
            }
            Err(e) => error!(error = %e, "the WhatsApp webhook receiver could not start"),
        }
    }
    let mut console_addr = None;
    let mut console_sessions = None;
    if let (Some(cfg), Some(listener), Some(sessions)) =
        (&config.console, console_listener, sessions)
    {
        let state = Arc::new(crate::console::ConsoleState::new(
            api_state.clone(),
            cfg,
            sessions,
            stop_rx.clone(),
        ));
        console_addr = listener.local_addr().ok();
        info!(console = ?console_addr, tls = state.tls, "staff console listening");
        tasks.push(Named {
            name: "console",
            handle: tokio::spawn(crate::console::serve(
                listener,
                console_tls.map(tokio_rustls::TlsAcceptor::from),
                state.clone(),
                stop_rx.clone(),
            )),
        });
        console_sessions = Some(state.sessions.clone());
    }
    tasks.push(Named {
        name: "local-api",
        handle: tokio::spawn(crate::api::serve(api_listener, api_state, stop_rx.clone())),
    });
    let pms_sender = match &config.pms.sender {
        Some(sender_config) => {
            let (sender, handle) = crate::pms::sender::Sender::new(
                vault.clone(),
                clock.clone(),
                sender_config.clone(),
            );
            tasks.push(Named {
                name: "pms-sender",
                handle: tokio::spawn(sender.run(stop_rx.clone())),
            });
            Some(handle)
        }
        None => None,
    };
    let whatsapp = match crate::whatsapp::worker::Worker::new(
        vault.clone(),
        clock.clone(),
        &config.whatsapp,
        None,
    ) {
        Ok((mut worker, handle)) => {
            if config.webhook.is_none() {
                // No status webhook can confirm a cut-off send: it goes
                // again at once (at-least-once).
                worker.in_doubt_hold = jiff::SignedDuration::ZERO;
            }
            // The account's template list, so that a send with a template
            // Meta would refuse fails at enqueue.
            if let (Some(client), true) = (
                worker.client(),
                config.whatsapp.business_account_id.is_some(),
            ) {
                tasks.push(Named {
                    name: "whatsapp-templates",
                    handle: tokio::spawn(crate::whatsapp::template_book::run(
                        vault.clone(),
                        client,
                        clock.clone(),
                        stop_rx.clone(),
                    )),
                });
            }
            tasks.push(Named {
                name: "whatsapp-outbox",
                handle: tokio::spawn(worker.run(stop_rx.clone())),
            });
            let _ = whatsapp_handle.set(handle.clone());
            Some(handle)
        }
        Err(e) => {
            tracing::error!(error = %e, "the WhatsApp outbox cannot start; messages stay queued");
            None
        }
    };
    let wa_media = match crate::whatsapp::media_worker::MediaWorker::new(
        vault.clone(),
        clock.clone(),
        &config.whatsapp,
    ) {
        Ok((worker, handle)) => {
            tasks.push(Named {
                name: "whatsapp-media",
                handle: tokio::spawn(worker.run(stop_rx.clone())),
            });
            Some(handle)
        }
        Err(e) => {
            tracing::error!(error = %e, "the WhatsApp media worker cannot start; media timers wait");
            None
        }
    };
    let (care_scheduler, care) =
        crate::care::scheduler::Scheduler::new(vault.clone(), clock.clone());
    tasks.push(Named {
        name: "care-scheduler",
        handle: tokio::spawn(care_scheduler.run(stop_rx.clone())),
    });
    tasks.push(Named {
        name: "housekeeping",
        handle: tokio::spawn(housekeeping(
            vault.clone(),
            clock.clone(),
            key_retention,
            stop_rx.clone(),
        )),
    });
    info!(mllp = %mllp_addr, api = %config.api.socket.display(), "listening");

    // After the API tasks: it ends once their last requests are answered
    // (every read waits for its own audit entry).
    tasks.push(Named {
        name: "read-audit",
        handle: read_audit_task,
    });
    Running {
        mllp_addr,
        api_socket: config.api.socket.clone(),
        api_tcp_addr,
        webhook_addr,
        webhook_tls,
        console_addr,
        console_sessions,
        vault,
        ingest,
        pms_sender,
        outbound: config.pms.outbound.clone(),
        whatsapp,
        wa_media,
        care,
        stop: stop_tx,
        tasks,
        watchdog,
        clock,
        grace: config.service.shutdown_timeout,
    }
}

impl Running {
    /// Stops accepting, lets in-flight work finish (within the grace
    /// period), records the stop, flushes and closes the vault.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.grace;
        for task in self.tasks {
            match tokio::time::timeout_at(deadline, task.handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(task = task.name, error = %e, "task ended abnormally"),
                Err(_) => warn!(
                    task = task.name,
                    "task did not stop in time; it resumes on next start"
                ),
            }
        }
        if let Some(w) = self.watchdog {
            let _ = tokio::task::spawn_blocking(move || w.stop()).await;
        }
        let stop = AuditDraft::new("system", "service.stop");
        self.vault.record_audit(self.clock.now(), [stop]).await?;
        let _ = std::fs::remove_file(&self.api_socket);
        let vault = self.vault;
        drop(self.ingest);
        tokio::task::spawn_blocking(move || vault.close())
            .await
            .map_err(|e| ServiceError::Join(e.to_string()))??;
        Ok(())
    }
}

pub async fn serve(config: Config, clock: SharedClock) -> Result<(), ServiceError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServiceError::Signals)?;
    let data_dir = config.service.data_dir.clone();
    let tz = config.service.time_zone_name.clone();
    let running = start(config, clock).await?;

    notify(&[
        NotifyState::Ready,
        NotifyState::Status("serving; WhatsApp dry-run"),
    ]);
    info!(version = VERSION, data_dir = %data_dir.display(), time_zone = %tz, "clinic-relay ready");

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                if let Some(w) = &running.whatsapp {
                    info!("SIGHUP: reloading the WhatsApp token");
                    w.reload_token();
                }
                match &running.webhook_tls {
                    Some(tls) => match tls.reload() {
                        Ok(()) => info!("SIGHUP: webhook TLS certificate reloaded"),
                        Err(e) => error!(error = %e, "SIGHUP: webhook TLS certificate not reloaded; the old one stays"),
                    },
                    None => info!("SIGHUP: no webhook TLS certificate to reload"),
                }
            }
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    running.shutdown().await?;
    info!("clinic-relay stopped");
    Ok(())
}

/// The watchdog period systemd asked for, as `sd_watchdog_enabled(3)` reads
/// it: `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another process. (The
/// sd-notify crate also requires `WATCHDOG_PID` to be present, which
/// libsystemd does not.)
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pets systemd's watchdog from an OS thread of its own: a blocking job on
/// the runtime's two workers cannot starve it. (It proves the process is
/// alive, not that every task makes progress.) The std channel is both the
/// timer (`recv_timeout`) and the stop signal.
pub struct Watchdog {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Watchdog {
    fn start(every: Duration) -> std::io::Result<Self> {
        Self::start_with(every, || notify(&[NotifyState::Watchdog]))
    }

    /// Calls `pet` every `every` until stopped (tests pass
    /// their own `pet`).
    pub fn start_with(every: Duration, pet: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("watchdog".to_owned())
            // The first pet comes one period after the start (READY=1 is
            // sent in between).
            .spawn(move || loop {
                match rx.recv_timeout(every) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => pet(),
                    Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(Self { stop, thread })
    }

    /// Stops the thread and waits for it (blocking, briefly).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Hourly upkeep that needs no trigger: idempotency keys past their
/// retention are pruned (in bounded jobs on the vault's writer).
async fn housekeeping(
    vault: Vault,
    clock: SharedClock,
    key_retention: jiff::SignedDuration,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = every.tick() => {}
        }
        match crate::commands::prune_idempotency_keys(&vault, clock.now(), key_retention).await {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, "expired idempotency keys pruned"),
            Err(e) => warn!(error = %e, "could not prune idempotency keys; will try again"),
        }
    }
}

fn spawn_rotation(vault: Vault, to: Option<MasterKey>, clock: SharedClock) -> JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        info!("master key rotation: re-sealing data while serving");
        let result = match &to {
            Some(mk) => vault.rotate_master_key(mk),
            None => vault.resume_rotation(),
        };
        match result {
            Ok(report) => {
                let rotated = AuditDraft::new("system", "keys.rotate")
                    .detail("resealed", report.resealed.to_string())
                    .detail("keys_retired", report.keys_retired.to_string());
                if let Err(e) = vault.record_audit_blocking(clock.now(), [rotated]) {
                    error!(error = %e, "could not audit the key rotation");
                }
                info!(
                    resealed = report.resealed,
                    "master key rotation complete: remove keys.previous_master_key_file from the config"
                );
            }
            Err(e) => error!(error = %e, "master key rotation stopped; it resumes on next start"),
        }
    })
}
