//! The reload plan: from the running and the new configuration (and the
//! TLS files whose contents changed), which parts restart, which keys are
//! handed over live and which settings need a process restart. Pure: no
//! I/O, unit-tested below.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::{ApiConfig, Bucket, Config, ModbusBus, SerialConfig};
use crate::telemetry::Part;

/// Which part a TLS file belongs to (its contents' change restarts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum FileOwner {
    Api,
    Mqtt,
    Uplink,
}

/// The TLS files a configuration names, with the part that reads them.
pub(super) fn tls_files(c: &Config) -> Vec<(FileOwner, PathBuf)> {
    let mut out = Vec::new();
    if let Some(t) = &c.api.tls {
        out.push((FileOwner::Api, t.cert_file.clone()));
        out.push((FileOwner::Api, t.key_file.clone()));
    }
    if let Some(t) = c.mqtt.as_ref().and_then(|m| m.tls.as_ref()) {
        if let Some(ca) = &t.ca_file {
            out.push((FileOwner::Mqtt, ca.clone()));
        }
        if let Some((cert, key)) = &t.client_auth {
            out.push((FileOwner::Mqtt, cert.clone()));
            out.push((FileOwner::Mqtt, key.clone()));
        }
    }
    if let Some(ca) = &c.uplink.ca_file {
        out.push((FileOwner::Uplink, ca.clone()));
    }
    out
}
/// What a bucket is apart from its key: a change restarts the parts that
/// route or forward by bucket.
fn bucket_shapes(c: &Config) -> Vec<(&str, &str)> {
    c.buckets
        .iter()
        .map(|b| (b.id.as_str(), b.name.as_str()))
        .collect()
}

/// The `[api]` section without the admin key (which applies live).
fn api_without_admin(a: &ApiConfig) -> ApiConfig {
    ApiConfig {
        admin_key: None,
        ..a.clone()
    }
}

/// What a reload has to do, computed from the running and the new
/// configuration (pure, unit-tested).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// Keys that need a process restart (the running value stays).
    pub needs_restart: Vec<&'static str>,
    pub mqtt: bool,
    /// Serial ports to stop (removed or changed), by path.
    pub serial_stop: Vec<String>,
    /// Serial ports to start (added or changed), by path.
    pub serial_start: Vec<String>,
    /// Modbus buses to stop (removed, or line settings changed), by name.
    pub modbus_stop: Vec<String>,
    /// Modbus buses to start (added, or line settings changed), by name.
    pub modbus_start: Vec<String>,
    /// Running buses whose devices alone changed: the new devices are
    /// handed to the bus, which restarts only the changed ones.
    pub modbus_devices: Vec<String>,
    pub api: bool,
    pub admin_key: bool,
    pub uplink: bool,
    /// Buckets whose write key alone changed (no uplink restart).
    pub keys: Vec<String>,
}

impl Plan {
    /// The plan to go from `old` to `new`; `changed_files` are TLS files
    /// whose contents changed. Values that cannot change live are copied
    /// from `old` into `new`.
    pub fn between(old: &Config, new: &mut Config, changed_files: &BTreeSet<PathBuf>) -> Plan {
        let mut plan = Plan::default();
        if new.gateway.id != old.gateway.id {
            plan.needs_restart.push("gateway.id");
        }
        if new.gateway.data_dir != old.gateway.data_dir {
            plan.needs_restart.push("gateway.data_dir");
        }
        if new.gateway != old.gateway && plan.needs_restart.is_empty() {
            plan.needs_restart.push("gateway");
        }
        new.gateway = old.gateway.clone();
        if new.store != old.store {
            plan.needs_restart.push("store");
            new.store = old.store.clone();
        }
        if new.clock != old.clock {
            plan.needs_restart.push("clock");
            new.clock = old.clock.clone();
        }
        if new.log != old.log {
            plan.needs_restart.push("log");
            new.log = old.log.clone();
        }
        let file_changed = |owner: FileOwner| {
            tls_files(new)
                .iter()
                .any(|(o, p)| *o == owner && changed_files.contains(p))
        };
        let buckets_reshaped = bucket_shapes(old) != bucket_shapes(new);
        plan.mqtt = old.mqtt != new.mqtt || buckets_reshaped || file_changed(FileOwner::Mqtt);
        plan.uplink =
            old.uplink != new.uplink || buckets_reshaped || file_changed(FileOwner::Uplink);
        plan.api = api_without_admin(&old.api) != api_without_admin(&new.api)
            || buckets_reshaped
            || file_changed(FileOwner::Api);
        plan.admin_key = old.api.admin_key != new.api.admin_key;
        if !plan.uplink {
            plan.keys = new
                .buckets
                .iter()
                .filter(|b| old.bucket(&b.id).is_some_and(|o| o.key != b.key))
                .map(|b| b.id.clone())
                .collect();
        }
        let old_ports: BTreeMap<&str, &SerialConfig> =
            old.serial.iter().map(|p| (p.path.as_str(), p)).collect();
        let new_ports: BTreeMap<&str, &SerialConfig> =
            new.serial.iter().map(|p| (p.path.as_str(), p)).collect();
        for (path, p) in &old_ports {
            if new_ports.get(path) != Some(p) {
                plan.serial_stop.push(path.to_string());
            }
        }
        for (path, p) in &new_ports {
            if old_ports.get(path) != Some(p) {
                plan.serial_start.push(path.to_string());
            }
        }
        let old_buses: BTreeMap<&str, &ModbusBus> =
            old.modbus.iter().map(|b| (b.name.as_str(), b)).collect();
        let new_buses: BTreeMap<&str, &ModbusBus> =
            new.modbus.iter().map(|b| (b.name.as_str(), b)).collect();
        for (name, b) in &old_buses {
            match new_buses.get(name) {
                Some(n) if n == b => {}
                Some(n) if n.line() == b.line() => plan.modbus_devices.push(name.to_string()),
                _ => plan.modbus_stop.push(name.to_string()),
            }
        }
        for (name, b) in &new_buses {
            if old_buses.get(name).is_none_or(|o| o.line() != b.line()) {
                plan.modbus_start.push(name.to_string());
            }
        }
        plan
    }

    /// The parts that change, for the `configuration reloaded` line (never
    /// a key value: buckets are named by name).
    pub fn changed(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        if self.mqtt {
            out.push(Part::Mqtt.to_string());
        }
        let ports: BTreeSet<&String> = self.serial_stop.iter().chain(&self.serial_start).collect();
        out.extend(
            ports
                .into_iter()
                .map(|p| Part::Serial(p.clone()).to_string()),
        );
        let buses: BTreeSet<&String> = self
            .modbus_stop
            .iter()
            .chain(&self.modbus_start)
            .chain(&self.modbus_devices)
            .collect();
        out.extend(
            buses
                .into_iter()
                .map(|b| Part::Modbus(b.clone()).to_string()),
        );
        if self.api {
            out.push(Part::Api.to_string());
        } else if self.admin_key {
            out.push("api.admin_key".to_owned());
        }
        if self.uplink {
            out.push(Part::Uplink.to_string());
        }
        for id in &self.keys {
            let name = new
                .bucket(id)
                .map_or(id.as_str(), |b: &Bucket| b.name.as_str());
            out.push(format!("key:{name}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Environment};
    use std::path::Path;

    struct NoEnv;
    impl Environment for NoEnv {
        fn var(&self, name: &str) -> Option<String> {
            match name {
                "KEY_A" => Some("dakkio_w_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into()),
                "KEY_B" => Some("dakkio_w_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into()),
                _ => None,
            }
        }
        fn hostname(&self) -> Option<String> {
            Some("host".into())
        }
    }

    const BASE: &str = r#"
[gateway]
id = "gw"
data_dir = "/tmp/x"

[[buckets]]
id = "aaaaaaaaaaaaaaaaaaaaaaaa"
name = "barn"
write_key_env = "KEY_A"

[mqtt]
host = "127.0.0.1"

[[mqtt.routes]]
topic = "barn/+"
bucket = "aaaaaaaaaaaaaaaaaaaaaaaa"
data_source = "111111111111111111111111"

[[serial]]
path = "/dev/ttyA"
line = { format = "kv" }
bucket = "aaaaaaaaaaaaaaaaaaaaaaaa"
data_source = "111111111111111111111111"

[[serial]]
path = "/dev/ttyB"
line = { format = "kv" }
bucket = "aaaaaaaaaaaaaaaaaaaaaaaa"
data_source = "222222222222222222222222"
"#;

    fn cfg(text: &str) -> Config {
        parse(text, Path::new("/etc/g.toml"), &NoEnv).unwrap_or_else(|e| panic!("{e}"))
    }

    fn plan(old: &str, new: &str) -> (Plan, Config) {
        let old = cfg(old);
        let mut new = cfg(new);
        let p = Plan::between(&old, &mut new, &BTreeSet::new());
        (p, new)
    }

    #[test]
    fn same_file_plans_nothing() {
        let (p, _) = plan(BASE, BASE);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_new_write_key_is_handed_over_without_restarts() {
        let (p, new) = plan(BASE, &BASE.replace("KEY_A", "KEY_B"));
        assert_eq!(p.keys, vec!["aaaaaaaaaaaaaaaaaaaaaaaa".to_owned()]);
        assert!(!p.uplink && !p.mqtt && !p.api);
        assert_eq!(p.changed(&new), vec!["key:barn".to_owned()]);
    }

    #[test]
    fn a_changed_port_restarts_only_that_port() {
        let (p, new) = plan(
            BASE,
            &BASE.replace("222222222222222222222222", "333333333333333333333333"),
        );
        assert_eq!(p.serial_stop, vec!["/dev/ttyB".to_owned()]);
        assert_eq!(p.serial_start, vec!["/dev/ttyB".to_owned()]);
        assert!(!p.mqtt && !p.uplink && !p.api);
        assert_eq!(p.changed(&new), vec!["serial:/dev/ttyB".to_owned()]);
    }

    #[test]
    fn a_changed_route_restarts_only_mqtt() {
        let (p, _) = plan(BASE, &BASE.replace("barn/+", "shed/+"));
        assert!(p.mqtt && !p.uplink && !p.api);
        assert!(p.serial_stop.is_empty() && p.serial_start.is_empty());
    }

    #[test]
    fn uplink_settings_restart_the_forwarders() {
        let (p, _) = plan(BASE, &format!("{BASE}\n[uplink]\nbatch_size = 7\n"));
        assert!(p.uplink && !p.mqtt && !p.api);
        assert!(p.keys.is_empty());
    }

    #[test]
    fn store_and_data_dir_need_a_restart_and_keep_the_running_value() {
        let (p, new) = plan(
            BASE,
            &format!(
                "{}\n[store]\nmax_size = \"64MiB\"\n",
                BASE.replace("/tmp/x", "/tmp/y")
            ),
        );
        assert_eq!(p.needs_restart, vec!["gateway.data_dir", "store"]);
        assert_eq!(new.gateway.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(new.store, cfg(BASE).store);
        assert!(p.changed(&new).is_empty());
    }

    #[test]
    fn a_changed_tls_file_restarts_only_its_part() {
        let text = format!(
            "{BASE}\n[api]\ntls_cert_file = \"/etc/tls/api.crt\"\n\
             tls_key_file = \"/etc/tls/api.key\"\n"
        );
        let old = cfg(&text);
        let mut new = cfg(&text);
        let unrelated: BTreeSet<PathBuf> = [PathBuf::from("/nowhere")].into();
        assert_eq!(Plan::between(&old, &mut new, &unrelated), Plan::default());
        let cert: BTreeSet<PathBuf> = [PathBuf::from("/etc/tls/api.crt")].into();
        let p = Plan::between(&old, &mut new, &cert);
        assert!(p.api && !p.mqtt && !p.uplink && !p.admin_key);
        assert_eq!(p.changed(&new), vec!["api".to_owned()]);
    }

    #[test]
    fn added_and_removed_ports_start_and_stop_alone() {
        let without_b = BASE[..BASE.rfind("[[serial]]").unwrap()].to_owned();
        let (p, _) = plan(BASE, &without_b);
        assert_eq!(p.serial_stop, vec!["/dev/ttyB".to_owned()]);
        assert!(p.serial_start.is_empty());
        let (p, _) = plan(&without_b, BASE);
        assert_eq!(p.serial_start, vec!["/dev/ttyB".to_owned()]);
        assert!(p.serial_stop.is_empty() && !p.mqtt && !p.uplink && !p.api);
    }

    const BUSES: &str = r#"
[[modbus]]
path = "/dev/ttyM1"
name = "m1"
bucket = "barn"
[[modbus.devices]]
unit = 1
data_source = "111111111111111111111111"
[[modbus.devices.registers]]
name = "t"
function = "holding"
address = 0
[[modbus.devices]]
unit = 2
data_source = "222222222222222222222222"
[[modbus.devices.registers]]
name = "t"
function = "holding"
address = 0

[[modbus]]
path = "/dev/ttyM2"
name = "m2"
bucket = "barn"
[[modbus.devices]]
unit = 1
data_source = "333333333333333333333333"
[[modbus.devices.registers]]
name = "t"
function = "input"
address = 0
"#;

    #[test]
    fn a_changed_device_is_handed_to_its_bus_and_a_changed_line_restarts_the_bus() {
        let base = format!("{BASE}{BUSES}");
        assert_eq!(plan(&base, &base).0, Plan::default());
        // Unit 2 reads another address: bus m1 gets its new devices, nothing
        // restarts.
        let changed = base.replacen("address = 0\n[[modbus.devices]]\nunit = 2", "", 0);
        let changed = {
            let at = changed.find("unit = 2").unwrap();
            let (head, tail) = changed.split_at(at);
            format!("{head}{}", tail.replacen("address = 0", "address = 9", 1))
        };
        let (p, new) = plan(&base, &changed);
        assert_eq!(p.modbus_devices, vec!["m1".to_owned()]);
        assert!(p.modbus_stop.is_empty() && p.modbus_start.is_empty());
        assert!(!p.mqtt && !p.uplink && !p.api && p.serial_start.is_empty());
        assert_eq!(p.changed(&new), vec!["modbus:m1".to_owned()]);
        // A new baud rate on m2: m2 alone restarts.
        let (p, _) = plan(
            &base,
            &base.replace(
                "path = \"/dev/ttyM2\"",
                "path = \"/dev/ttyM2\"\nbaud_rate = 19200",
            ),
        );
        assert_eq!(p.modbus_stop, vec!["m2".to_owned()]);
        assert_eq!(p.modbus_start, vec!["m2".to_owned()]);
        assert!(p.modbus_devices.is_empty());
        // Removed and added buses.
        let (p, _) = plan(&base, BASE);
        assert_eq!(p.modbus_stop, vec!["m1".to_owned(), "m2".to_owned()]);
        let (p, _) = plan(BASE, &base);
        assert_eq!(p.modbus_start, vec!["m1".to_owned(), "m2".to_owned()]);
    }

    #[test]
    fn a_renamed_bucket_restarts_what_routes_by_bucket() {
        let (p, _) = plan(BASE, &BASE.replace("name = \"barn\"", "name = \"shed\""));
        assert!(p.uplink && p.mqtt && p.api);
        assert!(p.keys.is_empty());
    }
}
