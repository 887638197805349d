use std::io::Write;

use clap::{Parser, Subcommand};
use gateway::{Application, Config, migrate, openapi_document, telemetry};

/// The SaaS platform service: metering, billing, onboarding and tenant lifecycle.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (the default).
    Serve,
    /// Apply pending Postgres and ClickHouse migrations, then exit.
    Migrate,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Print the OpenAPI document.
    Openapi,
    /// Ask a running instance's /readiness and print its summary; exit 1 unless ready.
    Readiness {
        /// The instance's address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// With the operator token: a live run, with what each check saw. Without: the
        /// latest result, without it.
        #[arg(long, env = "SAAS_OPERATOR_TOKEN", hide_env_values = true)]
        operator_token: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    match &command {
        Command::Openapi => return print(&openapi_document()),
        Command::Readiness {
            url,
            operator_token,
        } => {
            let (ready, summary) = gateway::readiness::ask(url, operator_token.as_deref()).await?;
            print(summary.trim_end())?;
            std::process::exit(if ready { 0 } else { 1 });
        }
        _ => {}
    }
    let config = Config::load()?;
    telemetry::init(&config.log);
    match command {
        Command::Serve => {
            let app = Application::build(config.clone()).await?;
            tracing::info!(listen = %config.listen, port = app.port(), "serving");
            app.run_until_stopped().await?;
        }
        Command::Migrate => migrate(&config).await?,
        Command::Config => print(&format!("{config:#?}"))?,
        Command::Openapi | Command::Readiness { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    Ok(())
}
