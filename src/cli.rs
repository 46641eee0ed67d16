//! The command line: `serve`, `check-config`, `keygen`, `sessions list|revoke`, `delegations`,
//! `m2m status|refresh`, `healthcheck`, `inject|uninject` (also as the kubectl plugin `kubectl-portcullis`).
//! Exit codes: 0 ok, 1 runtime failure, 64 bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(name = "portcullis", version = crate::telemetry::version_string(), about = "Envoy ext_authz sidecar: session cookie to IdP-revalidated identity")]
pub struct Cli {
    /// Configuration file (TOML); every key can be overridden by PORTCULLIS__SECTION__KEY.
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG", default_value = "/etc/portcullis/portcullis.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve Check (gRPC) and the HTTP routes until SIGTERM/SIGINT.
    Serve,
    /// Load and validate the configuration, naming every bad key, then exit.
    CheckConfig,
    /// Print a new AES-256 session encryption key entry (`<kid>:<base64>`), or with `--assertion` a new
    /// `[assertion] signing_keys` entry (`<kid>:<base64 PKCS#8>`).
    Keygen {
        /// An identity-assertion signing key instead of a session encryption key.
        #[arg(long)]
        assertion: bool,
        /// The assertion key's algorithm (with --assertion).
        #[arg(long, value_enum, default_value = "es256", requires = "assertion")]
        alg: crate::assertion::KeyAlg,
    },
    /// List or revoke a user's sessions.
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// How many delegated tokens (`portcullis.delegate`) are cached, per provider and scope (never a token).
    Delegations,
    /// The shared M2M (client-credentials) tokens in Redis.
    M2m {
        #[command(subcommand)]
        command: M2mCommand,
    },
    /// Exit 0 when the readiness route answers 2xx, 1 otherwise (Docker HEALTHCHECK, exec probes: the image
    /// has no curl). Reads no configuration.
    Healthcheck {
        #[arg(long, default_value = crate::healthcheck::DEFAULT_URL)]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Write the manifests back with Envoy and portcullis added to every pod template (native sidecars from
    /// the shipped k8s overlay) and the Services that select them pointed at Envoy. Reads no configuration.
    Inject(ManifestInput),
    /// Remove exactly what `inject` added.
    Uninject(ManifestInput),
    /// Mutating admission webhook (AdmissionReview v1, `POST /mutate`) over TLS: the same injection for
    /// Pods. Reads no configuration; the certificate and key are read again when their files change.
    Webhook {
        #[arg(long, default_value = "0.0.0.0:9443")]
        listen: std::net::SocketAddr,
        /// PEM certificate chain.
        #[arg(long)]
        tls_cert: PathBuf,
        /// PEM private key.
        #[arg(long)]
        tls_key: PathBuf,
    },
}

/// Where `inject`/`uninject` read manifests: a file, or `-` for stdin.
#[derive(clap::Args, Debug)]
pub struct ManifestInput {
    /// A YAML stream or `kind: List` (`-`: stdin).
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub file: String,
    /// The same as -f (`portcullis inject app.yaml`, `... | portcullis inject -`).
    #[arg(conflicts_with = "file", hide = true)]
    pub positional: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum SessionsAction {
    /// One line per live session of the user (never a token, cookie or key).
    List {
        #[arg(long)]
        user: String,
    },
    /// Delete every session of the user.
    Revoke {
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum M2mCommand {
    /// Per provider: is a token cached in Redis, and when does it expire (never the token itself).
    Status,
    /// Fetch a new token now, through the same lock the servers use.
    Refresh {
        /// Only this provider (default: every configured provider).
        provider: Option<String>,
    },
}

const EX_CONFIG: u8 = 64;

/// The name kubectl runs a plugin by: `kubectl portcullis ...` execs `kubectl-portcullis ...`.
const KUBECTL_PLUGIN: &str = "kubectl-portcullis";

pub fn main() -> ExitCode {
    let plugin = std::env::args_os()
        .next()
        .and_then(|a| PathBuf::from(a).file_stem().map(|s| s == KUBECTL_PLUGIN))
        .unwrap_or(false);
    let cli = if plugin {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().name("kubectl portcullis").bin_name("kubectl portcullis").get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(c) => c,
            Err(e) => e.exit(),
        }
    } else {
        Cli::parse()
    };
    if let Command::Inject(input) | Command::Uninject(input) = &cli.command {
        let mode = if matches!(cli.command, Command::Inject(_)) {
            crate::inject::Mode::Inject
        } else {
            crate::inject::Mode::Uninject
        };
        return inject(mode, input);
    }
    if let Command::Webhook { listen, tls_cert, tls_key } = &cli.command {
        crate::telemetry::init_logs(crate::config::LogFormat::Json);
        let (listen, cert, key) = (*listen, tls_cert.clone(), tls_key.clone());
        return run(Rt::Server(None), crate::inject::serve::serve(listen, cert, key));
    }
    if let Command::Keygen { assertion, alg } = cli.command {
        if !assertion {
            println!("{}", crate::crypto::generate_key());
            return ExitCode::SUCCESS;
        }
        return match crate::assertion::generate_key(alg) {
            Ok(k) => {
                println!("{k}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keygen: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Healthcheck { url, timeout_secs } = &cli.command {
        let timeout = std::time::Duration::from_secs(*timeout_secs);
        return run(Rt::Tool, async { crate::healthcheck::probe(url, timeout).await.map(|ok| println!("{ok}")) });
    }
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", cli.config.display());
            return ExitCode::from(EX_CONFIG);
        }
    };
    match cli.command {
        Command::Keygen { .. }
        | Command::Healthcheck { .. }
        | Command::Inject(_)
        | Command::Uninject(_)
        | Command::Webhook { .. } => ExitCode::SUCCESS,
        Command::CheckConfig => {
            println!("{}: ok ({} provider(s))", cli.config.display(), cfg.providers.len());
            println!("note: {}", crate::reload::RESTART_NOTE);
            ExitCode::SUCCESS
        }
        Command::Sessions { action } => run(Rt::Tool, sessions(cfg, action)),
        Command::Delegations => run(Rt::Tool, delegations(cfg)),
        Command::M2m { command } => {
            crate::telemetry::init_logs(crate::config::LogFormat::Text);
            run(Rt::Tool, m2m(cfg, command))
        }
        Command::Serve => {
            let (format, level, path) = (cfg.server.log_format, cfg.server.log_level.clone(), cli.config.clone());
            run(Rt::Server(Some(cfg.server.worker_threads)), async move {
                // Inside the runtime: the OTLP exporter's gRPC channel lives on it.
                if let Err(e) = crate::telemetry::init_logs_and_traces(format, &level) {
                    crate::telemetry::init_logs_at(format, &level);
                    return Err(format!("tracing: {e}"));
                }
                let served = crate::server::serve(cfg, path).await.map_err(|e| e.to_string());
                crate::otel::shutdown().await;
                served
            })
        }
    }
}

/// `inject`/`uninject`: YAML on stdout only, the summary (or the error) on stderr.
fn inject(mode: crate::inject::Mode, input: &ManifestInput) -> ExitCode {
    use std::io::{Read, Write};
    let file = input.positional.as_deref().unwrap_or(&input.file);
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(file)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match crate::inject::run(mode, &text) {
        Ok(out) => {
            for line in &out.summary {
                eprintln!("{line}");
            }
            if let Err(e) = std::io::stdout().write_all(out.yaml.as_bytes()) {
                eprintln!("stdout: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{file}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Which runtime a command runs on.
enum Rt {
    /// One thread: the command-line tools.
    Tool,
    /// With this many workers (default: one per CPU). One worker is tokio's current-thread scheduler: its
    /// run queue is first in, first out, so the checks that are ready all reach their Redis read before the
    /// connection's writer runs and their commands leave in one write. The multi-threaded scheduler runs a
    /// woken task next (its LIFO slot): the writer ran after every check and sent each command on its own.
    Server(Option<usize>),
}

/// Runs `fut` on a runtime; an error is printed and exits 1.
fn run(kind: Rt, fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let server = matches!(kind, Rt::Server(_));
    let rt = match kind {
        Rt::Server(Some(1)) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Rt::Server(workers) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = workers {
                b.worker_threads(n);
            }
            b.enable_all().build()
        }
        Rt::Tool => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = rt.block_on(fut);
    if let Err(e) = &done {
        if server {
            tracing::error!(error = %e, "portcullis failed");
        }
    }
    crate::telemetry::flush_logs();
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The session store on the configured Redis and keys, as the server has it.
fn session_store(cfg: &Config) -> Result<crate::session::SessionStore, String> {
    let redis = crate::store::Redis::connect(&cfg.redis).map_err(|e| e.to_string())?;
    let keys = cfg.session.key_ring().map_err(|e| e.to_string())?;
    Ok(crate::session::SessionStore::new(redis, std::sync::Arc::new(keys), &cfg.session))
}

async fn sessions(cfg: Config, action: SessionsAction) -> Result<(), String> {
    let store = session_store(&cfg)?;
    match action {
        SessionsAction::List { user } => {
            for s in store.user_sessions(&user).await.map_err(|e| format!("redis: {e}"))? {
                println!("{}", crate::admin::describe(&s));
            }
        }
        SessionsAction::Revoke { user } => {
            let key = crate::session::store::user_key(&user);
            let n = store.delete_indexed(&key).await.map_err(|e| format!("redis: {e}"))?;
            println!("revoked {n} session(s) of {user}");
        }
    }
    Ok(())
}

/// One JSON line per provider and scope: `{"provider":..,"scope":..,"tokens":N}`.
async fn delegations(cfg: Config) -> Result<(), String> {
    let store = session_store(&cfg)?;
    for row in crate::delegate::report::cached(&store, crate::now()).await.map_err(|e| format!("redis: {e}"))? {
        println!("{}", serde_json::json!(row));
    }
    Ok(())
}

async fn m2m(cfg: Config, command: M2mCommand) -> Result<(), String> {
    let mut out = std::io::stdout();
    let ok = match command {
        M2mCommand::Status => crate::m2m::command::status(&cfg, &mut out).await.map(|()| true),
        M2mCommand::Refresh { provider } => {
            // Built as `serve` builds it: the same discovery finds the token endpoints.
            let built = crate::providers::build(&cfg, crate::providers::M2mChoice::Shared, session_store(&cfg)?).await;
            match built.m2m {
                Some(m) => crate::m2m::command::refresh(&m, provider.as_deref(), &mut out).await,
                None => Err(crate::m2m::command::CommandError::NoManager),
            }
        }
    }
    .map_err(|e| format!("m2m: {e}"))?;
    if ok {
        Ok(())
    } else {
        Err("m2m: the refresh did not succeed for every provider".into())
    }
}
