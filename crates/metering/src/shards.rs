//! Where usage rows live when ClickHouse is a cluster of shards.
//!
//! One server: the tables `usage_events` and `usage_minutes` hold everything, and the
//! relay writes to them. A cluster: each shard holds `usage_events_local` and
//! `usage_minutes_local`, and every shard also has `usage_events` and `usage_minutes` as
//! `Distributed` tables over the cluster, so every read is the same SQL either way.
//!
//! All of a tenant's rows live on one shard, chosen from its id ([`shard_of`]): the
//! per-tenant `FINAL` reads then merge replays exactly, as on one server. The relay
//! writes each shard's rows straight into its local tables and waits for every shard to
//! acknowledge before it moves its cursor, so that everything below the cursor is
//! readable; asynchronous `Distributed` inserts would break that, so the `Distributed`
//! tables have no sharding key and refuse inserts.
//!
//! The number of shards must not change once usage is written: a tenant would move to
//! another shard, and a replay of its old rows there would count them twice.

use saas_core::TenantId;

/// A cluster of shards, as the ClickHouse servers' `remote_servers` configuration names
/// it, and the HTTP URL of each shard in that configuration's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub name: String,
    pub shard_urls: Vec<String>,
}

/// The tables the relay writes and erasure deletes from on each server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalTables {
    pub events: &'static str,
    pub minutes: &'static str,
}

pub(crate) const SINGLE_SERVER: LocalTables = LocalTables {
    events: "usage_events",
    minutes: "usage_minutes",
};

pub(crate) const SHARD_LOCAL: LocalTables = LocalTables {
    events: "usage_events_local",
    minutes: "usage_minutes_local",
};

/// The shard, of `shards`, that holds the tenant's rows. A fixed mix of the id's bits
/// (splitmix64's finaliser), so that every process, of any version, agrees.
pub fn shard_of(tenant: TenantId, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let bits = tenant.as_uuid().as_u128();
    let mut x = (bits >> 64) as u64 ^ bits as u64;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % shards as u64) as usize
}

/// A migration written for one server, for a shard: its tables renamed to the local ones.
pub(crate) fn for_shard(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some((at, table)) = next_table(rest) {
        out.push_str(&rest[..at + table.len()]);
        out.push_str("_local");
        rest = &rest[at + table.len()..];
    }
    out.push_str(rest);
    out
}

/// The first whole-word mention of one of the tables in `sql`, and which.
fn next_table(sql: &str) -> Option<(usize, &'static str)> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    [SINGLE_SERVER.events, SINGLE_SERVER.minutes]
        .into_iter()
        .filter_map(|table| {
            sql.match_indices(table)
                .find(|(at, _)| {
                    let before = sql[..*at].chars().next_back();
                    let after = sql[at + table.len()..].chars().next();
                    !before.is_some_and(word) && !after.is_some_and(word)
                })
                .map(|(at, _)| (at, table))
        })
        .min_by_key(|(at, _)| *at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_has_one_shard_and_tenants_spread_over_all() {
        let mut counts = [0usize; 3];
        for n in 0..3_000u128 {
            let tenant = TenantId::from_uuid(uuid::Uuid::from_u128(n * 0x9e37_79b9_7f4a_7c15));
            let shard = shard_of(tenant, 3);
            assert_eq!(shard, shard_of(tenant, 3));
            counts[shard] += 1;
        }
        assert!(
            counts.iter().all(|c| (800..1_200).contains(c)),
            "{counts:?}"
        );
        assert_eq!(shard_of(TenantId::from_uuid(uuid::Uuid::nil()), 1), 0);
    }

    #[test]
    fn shard_migrations_name_the_local_tables_only() {
        let sql = "INSERT INTO usage_minutes SELECT x FROM usage_events FINAL -- usage_events_x";
        assert_eq!(
            for_shard(sql),
            "INSERT INTO usage_minutes_local SELECT x FROM usage_events_local FINAL -- usage_events_x"
        );
    }
}
