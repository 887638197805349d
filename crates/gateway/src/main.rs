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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Openapi = command {
        return print(&openapi_document());
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
        Command::Openapi => unreachable!("handled above"),
    }
    Ok(())
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    Ok(())
}
