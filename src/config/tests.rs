//! Unit tests of the config framework; the fixture files under
//! `tests/fixtures/config` are checked by the integration tests.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::*;

pub(crate) struct FakeEnv(pub HashMap<String, String>);

impl Environment for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn hostname(&self) -> Option<String> {
        Some("test-host".into())
    }
}

fn env(pairs: &[(&str, &str)]) -> FakeEnv {
    FakeEnv(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn problems(text: &str) -> Vec<Problem> {
    parse(text, Path::new("/etc/g.toml"), &env(&[]))
        .expect_err("config should be refused")
        .problems
}

#[test]
fn the_example_parses_with_defaults() {
    let c = parse(
        EXAMPLE,
        Path::new("/etc/dakkio-gateway/gateway.toml"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(c.gateway.id, "test-host");
    assert_eq!(c.store, StoreConfig::default());
    assert_eq!(c.uplink, crate::config::UplinkConfig::default());
    assert_eq!(c.buckets.len(), 1);
    assert!(matches!(c.buckets[0].key, BucketKeyState::Missing(_)));
    let mqtt = c.mqtt.expect("the example enables MQTT");
    assert_eq!((mqtt.host.as_str(), mqtt.port), ("localhost", 1883));
    assert_eq!(mqtt.client_id_or(&c.gateway.id), "test-host");
    assert_eq!(mqtt.max_packet_size, 256 * 1024);
    assert!(!mqtt.clean_session);
    assert_eq!(mqtt.routes.len(), 1);
    assert_eq!(mqtt.routes[0].topic.filter(), "sensors/+/+");
}

#[test]
fn empty_file_is_all_defaults() {
    let c = parse("", Path::new("g.toml"), &env(&[])).unwrap();
    assert_eq!(c.gateway.data_dir, Path::new(gateway::DEFAULT_DATA_DIR));
    assert!(c.buckets.is_empty());
}

#[test]
fn unknown_key_names_line_path_and_suggestion() {
    let p = problems("[store]\nmax_size = \"1GiB\"\nretension = \"7d\"\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].line, Some(3));
    assert_eq!(p[0].key, "store.retension");
    assert!(
        p[0].message.contains("did you mean `retention`?"),
        "{}",
        p[0].message
    );
    let shown = p[0].to_string();
    assert!(shown.starts_with("/etc/g.toml:3:1: "), "{shown}");
}

#[test]
fn every_problem_is_reported() {
    let p = problems(
        "[store]\nmax_size = \"12 parsecs\"\ncommit_max_delay = \"30\"\n\
         [[buckets]]\nid = \"nothex\"\n",
    );
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["store.max_size", "store.commit_max_delay", "buckets[0].id"]
    );
    assert_eq!(p[2].line, Some(5));
    assert!(p[2].message.contains("got `nothex`"));
}

#[test]
fn durations_and_sizes() {
    let c = parse(
        "[store]\nmax_size = \"64MiB\"\ncommit_max_delay = \"200ms\"\nretention = \"2d\"\n",
        Path::new("g.toml"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(c.store.max_size, 64 << 20);
    assert_eq!(c.store.commit_max_delay, Duration::from_millis(200));
    assert_eq!(c.store.retention, Duration::from_secs(2 * 86_400));
}

#[test]
fn sources_per_bucket_cap() {
    let c = parse(
        "[store]\nmax_sources_per_bucket = 3\n",
        Path::new("g.toml"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(c.store.max_sources_per_bucket, 3);
    let d = parse("", Path::new("g.toml"), &env(&[])).unwrap();
    assert_eq!(d.store.max_sources_per_bucket, 10_000);
    let p = problems("[store]\nmax_sources_per_bucket = 0\n");
    assert_eq!(p[0].key, "store.max_sources_per_bucket");
    assert_eq!(p[0].line, Some(2));
}

#[test]
fn fields_per_point_cap() {
    let c = parse(
        "[api]\nmax_fields_per_point = 20\n",
        Path::new("g.toml"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(c.api.max_fields_per_point, 20);
    let d = parse("", Path::new("g.toml"), &env(&[])).unwrap();
    assert_eq!(d.api.max_fields_per_point, 1000);
    let p = problems("[api]\nmax_fields_per_point = 0\n");
    assert_eq!(p[0].key, "api.max_fields_per_point");
    assert_eq!(p[0].line, Some(2));
}

#[test]
fn enum_values_suggest() {
    let p = problems("[store]\non_full = \"drop_olderst\"\n");
    assert_eq!(p[0].key, "store.on_full");
    assert!(
        p[0].message.contains("did you mean `drop_oldest`"),
        "{}",
        p[0].message
    );
}

const BUCKET: &str = "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\n";

#[test]
fn keys_from_env_file_and_inline() {
    let c = parse(
        &format!("{BUCKET}write_key_env = \"K\"\n"),
        Path::new("g.toml"),
        &env(&[("K", "dakkio_w_abc123\n")]),
    )
    .unwrap();
    assert_eq!(
        c.buckets[0].write_key().map(|k| k.expose()),
        Some("dakkio_w_abc123")
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("barn.key"), "dakkio_w_fromfile\n").unwrap();
    let creds = dir.path().to_str().unwrap();
    let c = parse(
        &format!("{BUCKET}write_key_file = \"barn.key\"\n"),
        Path::new("/nowhere/g.toml"),
        &env(&[("CREDENTIALS_DIRECTORY", creds)]),
    )
    .unwrap();
    assert_eq!(
        c.buckets[0].write_key().map(|k| k.expose()),
        Some("dakkio_w_fromfile")
    );

    // From a root shell (no `$CREDENTIALS_DIRECTORY`): `credentials/`
    // beside the config, where the operator manual keeps them.
    std::fs::create_dir(dir.path().join("credentials")).unwrap();
    std::fs::write(
        dir.path().join("credentials").join("barn.key"),
        "dakkio_w_fromshell\n",
    )
    .unwrap();
    let c = parse(
        &format!("{BUCKET}write_key_file = \"barn.key\"\n"),
        &dir.path().join("g.toml"),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(
        c.buckets[0].write_key().map(|k| k.expose()),
        Some("dakkio_w_fromshell")
    );

    let c = parse(
        &format!("{BUCKET}write_key = \"dakkio_w_inline\"\n"),
        Path::new("g.toml"),
        &env(&[]),
    )
    .unwrap();
    assert!(c.buckets[0].key_source_inline);
}

#[test]
fn a_bucket_without_its_key_yet_is_valid() {
    let c = parse(
        &format!("{BUCKET}write_key_env = \"UNSET\"\n"),
        Path::new("g.toml"),
        &env(&[]),
    )
    .unwrap();
    match &c.buckets[0].key {
        BucketKeyState::Missing(why) => assert!(why.contains("`UNSET` is not set"), "{why}"),
        other => panic!("expected a missing key, got {other:?}"),
    }
}

#[test]
fn admin_and_read_keys_are_refused_without_showing_them() {
    let p = problems(&format!("{BUCKET}write_key = \"dakkio_a_secretadmin\"\n"));
    assert_eq!(p[0].key, "buckets[0].write_key");
    assert!(p[0].message.contains("allow_admin_key"));
    assert!(!p[0].message.contains("secretadmin"));

    let c = parse(
        &format!("{BUCKET}write_key = \"dakkio_a_secretadmin\"\nallow_admin_key = true\n"),
        Path::new("g.toml"),
        &env(&[]),
    )
    .unwrap();
    assert!(c.buckets[0].write_key().is_some());

    let p = problems(&format!(
        "{BUCKET}write_key = \"dakkio_r_secretread\"\nallow_admin_key = true\n"
    ));
    assert!(p[0].message.contains("read key"));
    assert!(!p[0].message.contains("secretread"));

    let p = problems(&format!("{BUCKET}write_key = \"hunter2\"\n"));
    assert!(p[0].message.contains("not a dakkio write key"));
    assert!(!p[0].message.contains("hunter2"));
}

#[test]
fn secrets_never_in_debug_output() {
    let c = parse(
        &format!("{BUCKET}write_key = \"dakkio_w_topsecret\"\n"),
        Path::new("g.toml"),
        &env(&[]),
    )
    .unwrap();
    assert!(!format!("{c:?}").contains("topsecret"));
}

#[test]
fn duplicate_buckets_and_two_key_sources() {
    let p = problems(&format!(
        "{BUCKET}\n{BUCKET}write_key_env = \"A\"\nwrite_key = \"dakkio_w_x\"\n"
    ));
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["buckets[1].id", "buckets[1].write_key"]);
}

#[test]
fn syntax_errors_have_a_position() {
    let p = problems("[store\nmax_size = 1\n");
    assert_eq!(p[0].line, Some(1));
    assert!(p[0].column.is_some());
}

#[test]
fn inline_keys_in_a_readable_file_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, format!("{BUCKET}write_key = \"dakkio_w_inline\"\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("chmod 600"));
    assert!(!c.warnings[0].contains("dakkio_w_inline"));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(load(&path).unwrap().warnings.is_empty());
}

#[test]
fn declared_sources_come_from_mqtt_route_maps() {
    let c = parse(
        EXAMPLE,
        Path::new("/etc/dakkio-gateway/gateway.toml"),
        &env(&[]),
    )
    .unwrap();
    let declared = c.declared_sources("507f1f77bcf86cd799439011");
    assert!(!declared.is_empty());
    let route = &c.mqtt.as_ref().unwrap().routes[0];
    for (name, id) in &route.data_sources {
        assert_eq!(declared.get(id), Some(name));
    }
    assert!(c.declared_sources("507f1f77bcf86cd7994390ff").is_empty());
}

/// A key pasted where a variable name, a path or an id belongs: refused,
/// the error says so, and no message shows the key.
#[test]
fn a_key_pasted_for_a_name_path_or_id_is_refused_and_never_shown() {
    const KEY: &str = "dakkio_w_Pasted0123456789abcdef";
    const ADMIN: &str = "dakkio_a_Pasted0123456789abcdef";
    let cases = [
        (
            format!("{BUCKET}write_key_env = \"{KEY}\"\n"),
            "buckets[0].write_key_env",
            "`buckets[0].write_key_env` holds what looks like a dakkio key, pasted where the \
             name of an environment variable was expected (the key is not shown)",
        ),
        (
            format!("{BUCKET}write_key_file = \"/etc/{KEY}\"\n"),
            "buckets[0].write_key_file",
            "`buckets[0].write_key_file` holds what looks like a dakkio key, pasted where the \
             path of a file was expected (the key is not shown)",
        ),
        (
            format!("[[buckets]]\nid = \"{KEY}\"\nwrite_key_env = \"K\"\n"),
            "buckets[0].id",
            "`buckets[0].id` holds what looks like a dakkio key, pasted where the bucket id \
             was expected (the key is not shown)",
        ),
        (
            format!("[api]\nadmin_key_env = \"{ADMIN}\"\n"),
            "api.admin_key_env",
            "`api.admin_key_env` holds what looks like a dakkio key, pasted where the name \
             of an environment variable was expected (the key is not shown)",
        ),
    ];
    for (text, key, want) in cases {
        let p = problems(&text);
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("Pasted0123"),
            "{text}: key shown in {shown}"
        );
        let hit = p
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{text}: no problem at `{key}`: {shown}"));
        assert!(hit.message.starts_with(want), "{}", hit.message);
    }
}

/// Every message is masked, whatever check produced it: an unknown value
/// that quotes what was typed cannot show a key either.
#[test]
fn key_shaped_text_is_masked_in_every_problem_and_warning() {
    let p = problems("[gateway]\nid = \"dakkio_w_Pasted0123456789\"\nnope = 1\n");
    for problem in &p {
        assert!(
            !problem.message.contains("Pasted0123"),
            "{}",
            problem.message
        );
    }
    let c = parse(
        &format!("{BUCKET}write_key_env = \"K\"\n[api]\nadmin_key_env = \"UNSET_ADMIN\"\n"),
        Path::new("g.toml"),
        &env(&[]),
    )
    .unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("UNSET_ADMIN")));
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success());
}

/// A FIFO or a device where a key file belongs is refused at once (reading
/// one used to block, or to read without end), with a message naming it.
#[test]
fn key_and_config_files_must_be_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("barn.key");
    mkfifo(&fifo);
    let config = dir.path().join("g.toml");
    let c = parse(
        &format!("{BUCKET}write_key_file = \"barn.key\"\n"),
        &config,
        &env(&[]),
    )
    .unwrap();
    match &c.buckets[0].key {
        BucketKeyState::Missing(why) => assert_eq!(
            why,
            &format!(
                "file `{}` cannot be read: it is a FIFO, not a regular file",
                fifo.display()
            )
        ),
        BucketKeyState::Ready(_) => panic!("a FIFO gave a key"),
    }

    let p = parse(
        "[mqtt]\nusername = \"u\"\npassword_file = \"/dev/zero\"\n",
        &config,
        &env(&[]),
    )
    .unwrap_err()
    .problems;
    assert_eq!(
        p[0].message,
        "`mqtt.password_file` `/dev/zero` cannot be read: it is a character device, not a \
         regular file"
    );

    let p = parse("[api]\nadmin_key_file = \"barn.key\"\n", &config, &env(&[]))
        .unwrap_err()
        .problems;
    assert!(
        p[0].message.starts_with(&format!(
            "`api.admin_key_file`: file `{}` cannot be read: it is a FIFO, not a regular file",
            fifo.display()
        )),
        "{}",
        p[0].message
    );

    let p = parse(
        "[mqtt]\nport = 8883\n[mqtt.tls]\nca_file = \"barn.key\"\n",
        &config,
        &env(&[]),
    )
    .unwrap_err()
    .problems;
    assert_eq!(
        p[0].message,
        format!(
            "`mqtt.tls.ca_file` `{}` cannot be read: it is a FIFO, not a regular file",
            fifo.display()
        )
    );

    let big = dir.path().join("big.key");
    std::fs::write(&big, vec![b'a'; 70 * 1024]).unwrap();
    let c = parse(
        &format!("{BUCKET}write_key_file = \"big.key\"\n"),
        &config,
        &env(&[]),
    )
    .unwrap();
    assert!(
        matches!(&c.buckets[0].key, BucketKeyState::Missing(why) if why.ends_with("it is larger than 65536 bytes")),
        "{:?}",
        c.buckets[0].key
    );

    // The config file itself.
    let e = load(&fifo).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read the file: it is a FIFO, not a regular file"),
        "{e}"
    );
}

/// The warnings about files, without the one about a `[mqtt]` with no routes.
fn file_warnings(c: &Config) -> Vec<String> {
    c.warnings
        .iter()
        .filter(|w| !w.contains("[[mqtt.routes]]"))
        .cloned()
        .collect()
}

#[test]
fn an_inline_mqtt_password_in_a_readable_file_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, "[mqtt]\nusername = \"u\"\npassword = \"hunter2\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(
        file_warnings(&c),
        [format!(
            "`{}` holds the inline `mqtt.password` and is readable by group or others \
             (mode 640); run `chmod 600` on it, or move the password to `password_file` / \
             `password_env`",
            path.display()
        )]
    );
    assert!(!format!("{:?}", c.warnings).contains("hunter2"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(file_warnings(&load(&path).unwrap()).is_empty());
    // From a file, the config's mode does not matter.
    std::fs::write(dir.path().join("pw"), "hunter2\n").unwrap();
    std::fs::write(&path, "[mqtt]\nusername = \"u\"\npassword_file = \"pw\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(file_warnings(&load(&path).unwrap()).is_empty());
}

#[test]
fn a_tls_private_key_anyone_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for f in ["api.crt", "api.key", "c.crt", "c.key"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let path = dir.path().join("g.toml");
    std::fs::write(
        &path,
        "[api]\ntls_cert_file = \"api.crt\"\ntls_key_file = \"api.key\"\n\
         [mqtt]\nport = 8883\n[mqtt.tls]\nclient_cert_file = \"c.crt\"\n\
         client_key_file = \"c.key\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mode = |f: &str, m: u32| {
        std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode("api.key", 0o644);
    mode("c.key", 0o604);
    let c = load(&path).unwrap();
    assert_eq!(
        file_warnings(&c),
        [
            format!(
                "`mqtt.tls.client_key_file` `{}` is a private key readable by everyone (mode \
                 604); run `chmod 600` on it (or `chmod 640` with the gateway's group)",
                dir.path().join("c.key").display()
            ),
            format!(
                "`api.tls_key_file` `{}` is a private key readable by everyone (mode 644); \
                 run `chmod 600` on it (or `chmod 640` with the gateway's group)",
                dir.path().join("api.key").display()
            ),
        ]
    );
    mode("api.key", 0o640);
    mode("c.key", 0o600);
    assert!(file_warnings(&load(&path).unwrap()).is_empty());
}

/// Config is plain data: it imports nothing from the parts that use it,
/// and the modules it imports import nothing above them.
#[test]
fn config_imports_nothing_from_the_parts_that_use_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<_> = std::fs::read_dir(src.join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    assert!(files.len() > 5, "{files:?}");
    files.extend(["reading.rs", "secret.rs", "tls.rs", "topic.rs"].map(|f| src.join(f)));
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for part in ["ingest", "uplink", "api", "store", "app"] {
            assert!(
                !text.contains(&format!("crate::{part}")),
                "{} imports `crate::{part}`",
                f.display()
            );
        }
    }
}

#[test]
fn alerts_entries_and_topic_are_checked_with_line_and_key() {
    let p = problems(
        "[alerts]\nallow = [\"192.168.1.0/24\", \"10.0.0.0/33\"]\nmqtt_topic = \"site/#\"\n",
    );
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].key, "alerts.allow[1]");
    assert_eq!(p[0].line, Some(2));
    assert!(p[0].message.contains("10.0.0.0/33"), "{}", p[0].message);
    assert_eq!(p[1].key, "alerts.mqtt_topic");
    assert_eq!(p[1].line, Some(3));
    let p = problems("[alerts]\nmqtt_topic = \"site/alerts\"\n");
    assert!(p[0].message.contains("`[mqtt]`"), "{}", p[0].message);
    let p = problems("[alerts]\nalow = []\n");
    assert!(p[0].message.contains("allow"), "{}", p[0].message);
    let ok = parse(
        "[alerts]\nallow = [\"siren.local:8080\"]\n",
        Path::new("/etc/g.toml"),
        &env(&[]),
    )
    .unwrap();
    assert!(ok.alerts.allows("siren.local", None, 8080));
    assert!(!ok.alerts.allows("siren.local", None, 80));
}
