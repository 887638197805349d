//! Background workers run inside the service process, each until the stop signal.

use metering::relay::Relay;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

pub fn spawn(state: &AppState, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let relay = Relay::new(
        state.db.clone(),
        state.clickhouse.clone(),
        state.config.relay_settings(),
    );
    vec![tokio::spawn(relay.run(stop))]
}
