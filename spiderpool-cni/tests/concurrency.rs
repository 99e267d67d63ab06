//! Many `spiderpool` plugin processes at once on one pool, called as a runtime calls them (one
//! process per call, the environment and the network configuration on stdin): no address is
//! handed out twice, none is lost, DEL releases everything, retries of one attachment share
//! one address, and a call that cannot get the store's write lock within `ipam.busy_wait_ms`
//! answers CNI code 11 and changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spiderpool_cni::demo::TemporaryDir;
use spiderpool_cni::store::STATE_FILE;

use spiderpool_check::kit::documents::pool;
use spiderpool_check::kit::plugin::plugin;

/// The pool: a /16, 65,533 addresses, far more than any test here allocates.
const POOL: &str = "conc";

/// The number of plugin processes in flight at once, and the number of ADDs in all.
const PROCESSES: usize = 64;
const ADDS: usize = 1_000;

/// A pool file and a data directory (the store is created by the first call).
struct Network {
    _dir: TemporaryDir,
    pools: PathBuf,
    data: PathBuf,
}

impl Network {
    fn new(prefix: &str) -> Network {
        let dir = TemporaryDir::new(prefix).expect("a temporary directory");
        let pools = dir.path().join("pools.yaml");
        std::fs::write(
            &pools,
            pool(
                POOL,
                "{subnet: 10.20.0.0/16, ips: [10.20.0.2-10.20.255.254], gateway: 10.20.0.1}",
            ),
        )
        .expect("the pool file is written");
        let data = dir.path().join("data");
        Network {
            _dir: dir,
            pools,
            data,
        }
    }

    /// The network configuration a runtime passes on stdin.
    fn config(&self, version: &str, busy_wait_ms: Option<u64>) -> Vec<u8> {
        let mut ipam = json!({
            "type": "spiderpool",
            "ippools_path": self.pools,
            "data_dir": self.data,
            "node_name": "n1",
        });
        if let Some(ms) = busy_wait_ms {
            ipam["busy_wait_ms"] = json!(ms);
        }
        let config = json!({
            "cniVersion": version,
            "name": "net",
            "type": "macvlan",
            "ipam": ipam,
            "args": {"cni": {"annotations": {"ipam.spidernet.io/ippool": "{\"ipv4\":[\"conc\"]}"}}},
        });
        serde_json::to_vec(&config).expect("the configuration serializes")
    }

    /// Runs the CLI with `-o json` and returns its output; it must succeed.
    fn cli(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
        spiderpool_check::kit::plugin::cli(&self.pools, &self.data, &args)
    }

    /// `ippool show conc`: container ID -> (address, pod UID), asserting that no address and
    /// no container appears twice.
    fn stored(&self) -> BTreeMap<String, (Ipv4Addr, Option<String>)> {
        let rows = self.cli(&["ippool", "show", POOL]);
        let rows = rows.as_array().expect("show prints a list");
        let mut by_container = BTreeMap::new();
        let mut addresses = BTreeSet::new();
        for row in rows {
            let address: Ipv4Addr = row["address"]
                .as_str()
                .expect("an address")
                .parse()
                .expect("an IPv4");
            let container = row["container"].as_str().expect("a container").to_owned();
            let uid = row["podUid"].as_str().map(str::to_owned);
            assert_eq!(row["interface"], "eth0", "{row}");
            assert!(addresses.insert(address), "{address} is stored twice");
            let previous = by_container.insert(container.clone(), (address, uid));
            assert!(previous.is_none(), "{container} holds two addresses");
        }
        by_container
    }

    /// `ippool list`: the pool's ALLOCATED-IP-COUNT.
    fn allocated_count(&self) -> u64 {
        let rows = self.cli(&["ippool", "list"]);
        let row = rows
            .as_array()
            .expect("list prints a list")
            .iter()
            .find(|row| row["name"] == POOL)
            .expect("the pool is listed");
        row["allocatedIpCount"].as_u64().expect("a count")
    }
}

/// One plugin call: the command and the attachment.
#[derive(Debug, Clone)]
struct Call {
    command: &'static str,
    container: String,
    /// When set, the pod's UID (and name) go in `CNI_ARGS`, and the pod owns the allocation;
    /// otherwise the container ID does.
    pod_uid: Option<String>,
}

impl Call {
    fn new(command: &'static str, index: usize, with_pod: bool) -> Call {
        Call {
            command,
            container: format!("conc{index:04}c0ffee{index:04}"),
            pod_uid: with_pod.then(|| format!("00000000-0000-4000-8000-{index:012}")),
        }
    }

    fn with_command(&self, command: &'static str) -> Call {
        Call {
            command,
            ..self.clone()
        }
    }

    fn cni_args(&self) -> String {
        match &self.pod_uid {
            Some(uid) => format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{};K8S_POD_UID={uid}",
                self.container
            ),
            None => "IgnoreUnknown=1".into(),
        }
    }
}

/// What one plugin process did.
#[derive(Debug)]
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {self:?}"))
    }

    /// The CNI error code of a failed call.
    fn code(&self) -> Option<u64> {
        (!self.status.success()).then(|| self.json()["code"].as_u64().expect("an error code"))
    }

    /// The address of a successful ADD.
    fn address(&self) -> Ipv4Addr {
        assert!(
            self.status.success(),
            "ADD failed ({}): {} {}",
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        );
        let result = self.json();
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "{result}");
        let cidr = ips[0]["address"].as_str().expect("an address");
        assert!(cidr.ends_with("/16"), "{cidr} is not in the /16 subnet");
        let address: Ipv4Addr = cidr.trim_end_matches("/16").parse().expect("an IPv4 address");
        assert_eq!(address.octets()[..2], [10, 20], "{address} is outside the pool");
        assert_ne!(address, Ipv4Addr::new(10, 20, 0, 1), "the gateway was handed out");
        address
    }
}

/// Runs one plugin process as a runtime does and waits for it.
fn run(call: &Call, config: &[u8]) -> Outcome {
    let started = Instant::now();
    let mut child = Command::new(plugin())
        .env_clear()
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", &call.container)
        .env("CNI_NETNS", format!("/var/run/netns/{}", call.container))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", call.cni_args())
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the plugin starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(config)
        .expect("the configuration is written");
    let output = child.wait_with_output().expect("the plugin is waited for");
    Outcome {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Runs `calls` with `workers` plugin processes in flight at once (each worker starts its next
/// process when its last one ended; all workers start together), and returns the outcomes in
/// the order of `calls` with the largest number of processes seen running at once.
fn run_parallel(workers: usize, calls: &[Call], config: &[u8]) -> (Vec<Outcome>, usize) {
    let next = AtomicUsize::new(0);
    let running = AtomicUsize::new(0);
    let peak = AtomicUsize::new(0);
    let start = Barrier::new(workers);
    let outcomes: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..calls.len()).map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                start.wait();
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(call) = calls.get(index) else { break };
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let outcome = run(call, config);
                    running.fetch_sub(1, Ordering::SeqCst);
                    outcomes.lock().expect("no worker panicked")[index] = Some(outcome);
                }
            });
        }
    });
    let outcomes = outcomes
        .into_inner()
        .expect("no worker panicked")
        .into_iter()
        .map(|outcome| outcome.expect("every call ran"))
        .collect();
    (outcomes, peak.into_inner())
}

fn percentile(outcomes: &[Outcome], p: usize) -> Duration {
    let mut times: Vec<Duration> = outcomes.iter().map(|o| o.elapsed).collect();
    times.sort();
    times[(times.len() - 1) * p / 100]
}

/// 64 processes at once, 1,000 ADDs in all (half owned by a pod UID, half by the container ID)
/// on a data directory with no store yet, so the first processes also race to create it. Every
/// ADD succeeds, the 1,000 addresses are distinct, and the store holds exactly those 1,000
/// allocations for exactly those attachments. Then 1,000 DELs, 64 at once, release everything.
#[test]
fn sixty_four_processes_add_a_thousand_without_duplicates_or_losses_and_del_releases_all() {
    let net = Network::new("spiderpool-concurrency");
    let config = net.config("1.0.0", None);
    let adds: Vec<Call> = (0..ADDS)
        .map(|i| Call::new("ADD", i, i.is_multiple_of(2)))
        .collect();

    let started = Instant::now();
    let (outcomes, peak) = run_parallel(PROCESSES, &adds, &config);
    let add_time = started.elapsed();
    let mut handed_out = BTreeMap::new();
    for (call, outcome) in adds.iter().zip(&outcomes) {
        let address = outcome.address();
        if let Some(other) = handed_out.insert(address, call.container.clone()) {
            panic!("{address} was handed out to both {other} and {}", call.container);
        }
    }
    assert_eq!(handed_out.len(), ADDS, "1,000 ADDs, 1,000 distinct addresses");
    assert!(peak >= PROCESSES / 2, "only {peak} plugin processes ran at once");

    let stored = net.stored();
    assert_eq!(
        stored.len(),
        ADDS,
        "every ADD's allocation is stored, and nothing else"
    );
    for (call, outcome) in adds.iter().zip(&outcomes) {
        let (address, uid) = stored.get(&call.container).unwrap_or_else(|| {
            panic!(
                "{} got {} but nothing is stored",
                call.container,
                outcome.address()
            )
        });
        assert_eq!(
            *address,
            outcome.address(),
            "{}: stored vs answered",
            call.container
        );
        assert_eq!(*uid, call.pod_uid, "{}: the stored owner", call.container);
    }
    assert_eq!(net.allocated_count(), ADDS as u64, "ALLOCATED-IP-COUNT");

    let dels: Vec<Call> = adds.iter().map(|call| call.with_command("DEL")).collect();
    let started = Instant::now();
    let (del_outcomes, del_peak) = run_parallel(PROCESSES, &dels, &config);
    let del_time = started.elapsed();
    for (call, outcome) in dels.iter().zip(&del_outcomes) {
        assert!(
            outcome.status.success(),
            "DEL of {} failed: {outcome:?}",
            call.container
        );
        assert!(
            outcome.stdout.trim().is_empty(),
            "DEL prints nothing: {outcome:?}"
        );
    }
    assert_eq!(net.stored(), BTreeMap::new(), "DEL released every allocation");
    assert_eq!(net.allocated_count(), 0, "ALLOCATED-IP-COUNT after DEL");

    eprintln!(
        "{ADDS} ADDs with {PROCESSES} workers (peak {peak} processes at once): {add_time:.2?}, \
         per call p50 {:.1?} p99 {:.1?} max {:.1?}; {ADDS} DELs (peak {del_peak}): {del_time:.2?}, \
         p50 {:.1?} p99 {:.1?} max {:.1?}",
        percentile(&outcomes, 50),
        percentile(&outcomes, 99),
        percentile(&outcomes, 100),
        percentile(&del_outcomes, 50),
        percentile(&del_outcomes, 99),
        percentile(&del_outcomes, 100),
    );
}

/// A runtime retrying a slow ADD runs several ADDs of one attachment at once: 8 attachments,
/// 8 concurrent ADDs each (64 processes, interleaved). Each attachment gets one address, every
/// answer for it names that address, and 64 concurrent DELs (again 8 per attachment) release
/// them all.
#[test]
fn concurrent_adds_of_one_attachment_share_one_address() {
    let net = Network::new("spiderpool-concurrency-retry");
    let config = net.config("1.0.0", None);
    let attachments: Vec<Call> = (0..8).map(|i| Call::new("ADD", i, i.is_multiple_of(2))).collect();
    let adds: Vec<Call> = (0..64).map(|i| attachments[i % 8].clone()).collect();
    let (outcomes, _) = run_parallel(64, &adds, &config);
    let mut answered: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for (call, outcome) in adds.iter().zip(&outcomes) {
        answered
            .entry(call.container.clone())
            .or_default()
            .insert(outcome.address());
    }
    let stored = net.stored();
    assert_eq!(stored.len(), 8, "one allocation per attachment: {stored:?}");
    for (container, addresses) in &answered {
        assert_eq!(addresses.len(), 1, "{container} was answered {addresses:?}");
        assert_eq!(
            Some(addresses.first().expect("one address")),
            stored.get(container).map(|(address, _)| address),
            "{container}: answered vs stored"
        );
    }
    assert_eq!(net.allocated_count(), 8);

    let dels: Vec<Call> = adds.iter().map(|call| call.with_command("DEL")).collect();
    let (outcomes, _) = run_parallel(64, &dels, &config);
    for outcome in &outcomes {
        assert!(outcome.status.success(), "DEL failed: {outcome:?}");
    }
    assert_eq!(net.stored(), BTreeMap::new());
    assert_eq!(net.allocated_count(), 0);
}

/// The honest way to keep the write lock taken: another SQLite connection to the store in a
/// `BEGIN IMMEDIATE` transaction, exactly what a plugin process holds during its call. While it
/// is held, ADD, DEL and GC with `busy_wait_ms: 300` each wait about 300 ms, then answer code
/// 11 and change nothing; the CLI still reads (readers never wait). Once it is released, the
/// same calls succeed.
#[test]
fn a_call_that_cannot_get_the_lock_within_busy_wait_answers_11_and_changes_nothing() {
    const WAIT_MS: u64 = 300;
    let net = Network::new("spiderpool-concurrency-busy");
    let config = net.config("1.0.0", Some(WAIT_MS));
    let kept: Vec<Call> = (0..3).map(|i| Call::new("ADD", i, i.is_multiple_of(2))).collect();
    for call in &kept {
        run(call, &config).address();
    }
    let before = net.stored();
    let count_before = net.allocated_count();
    assert_eq!(before.len(), 3);
    let state_file = net.data.join(STATE_FILE);
    let file_before = std::fs::read(&state_file).expect("the state file is read");

    let holder = rusqlite::Connection::open(&state_file).expect("the store opens");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("the write lock is taken");

    let new_pod = Call::new("ADD", 100, true);
    let new_container = Call::new("ADD", 101, false);
    let del = kept[0].with_command("DEL");
    let gc_config = {
        let mut config: Value = serde_json::from_slice(&net.config("1.1.0", Some(WAIT_MS))).expect("JSON");
        config["cni.dev/valid-attachments"] = json!([]);
        serde_json::to_vec(&config).expect("JSON")
    };
    let gc = Call {
        command: "GC",
        container: String::new(),
        pod_uid: None,
    };
    let blocked = [
        ("ADD (pod)", run(&new_pod, &config)),
        ("ADD (container)", run(&new_container, &config)),
        ("DEL", run(&del, &config)),
        ("GC", run(&gc, &gc_config)),
    ];
    for (what, outcome) in &blocked {
        assert_eq!(
            outcome.code(),
            Some(11),
            "{what} while the lock is held: {outcome:?}"
        );
        let error = outcome.json();
        let msg = error["msg"].as_str().expect("a message");
        assert!(
            msg.contains("locked") && msg.contains("try again"),
            "{what}: {error}"
        );
        assert!(
            outcome.elapsed >= Duration::from_millis(WAIT_MS),
            "{what} gave up after {:?}, before busy_wait_ms",
            outcome.elapsed
        );
        assert!(
            outcome.elapsed < Duration::from_millis(WAIT_MS) + Duration::from_secs(5),
            "{what} waited {:?}",
            outcome.elapsed
        );
    }
    // Readers are not blocked by a writer, and see nothing of the refused calls.
    assert_eq!(net.stored(), before, "state while the lock is held");
    assert_eq!(net.allocated_count(), count_before);

    holder.execute_batch("ROLLBACK").expect("the lock is released");
    drop(holder);
    assert_eq!(net.stored(), before, "state after the refused calls");
    assert_eq!(
        std::fs::read(&state_file).expect("the state file is read"),
        file_before,
        "the state file is byte for byte unchanged"
    );

    // The same calls now go through.
    let added_pod = run(&new_pod, &config).address();
    let added_container = run(&new_container, &config).address();
    let deleted = run(&del, &config);
    assert!(deleted.status.success(), "{deleted:?}");
    let after = net.stored();
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(after[&new_pod.container].0, added_pod);
    assert_eq!(after[&new_container.container].0, added_container);
    assert!(!after.contains_key(&kept[0].container));
    let collected = run(&gc, &gc_config);
    assert!(collected.status.success(), "{collected:?}");
    assert_eq!(
        net.stored(),
        BTreeMap::new(),
        "GC with no valid attachment frees everything"
    );
}

/// Contention instead of a held lock: 64 processes at once, 400 ADDs with `busy_wait_ms: 1`.
/// Every call either succeeds or answers 11 (no other outcome), some do answer 11, and the
/// store holds exactly the allocations of the ADDs that succeeded, at the addresses they were
/// answered. Then the same with DEL: the store keeps exactly the allocations whose DEL answered
/// 11. Retrying those with the default wait releases the rest.
#[test]
fn with_a_1ms_busy_wait_every_call_succeeds_or_answers_11_and_the_state_matches() {
    const CALLS: usize = 400;
    let net = Network::new("spiderpool-concurrency-contention");
    let impatient = net.config("1.0.0", Some(1));
    let patient = net.config("1.0.0", None);
    // Create the store first, so that contention is on the write lock.
    let first = Call::new("ADD", 9_999, false);
    run(&first, &patient).address();
    run(&first.with_command("DEL"), &patient);

    let adds: Vec<Call> = (0..CALLS)
        .map(|i| Call::new("ADD", i, i.is_multiple_of(2)))
        .collect();
    let (outcomes, _) = run_parallel(PROCESSES, &adds, &impatient);
    let mut succeeded = BTreeMap::new();
    let mut refused = 0;
    for (call, outcome) in adds.iter().zip(&outcomes) {
        match outcome.code() {
            None => {
                succeeded.insert(call.container.clone(), (outcome.address(), call.pod_uid.clone()));
            }
            Some(11) => refused += 1,
            Some(_) => panic!(
                "ADD of {} neither succeeded nor answered 11: {outcome:?}",
                call.container
            ),
        }
    }
    eprintln!(
        "busy_wait_ms 1, {CALLS} ADDs: {} succeeded, {refused} answered 11",
        succeeded.len()
    );
    assert!(
        refused > 0,
        "no ADD ran out of its 1 ms wait; the test did not contend"
    );
    assert_eq!(
        net.stored(),
        succeeded,
        "the store holds exactly the ADDs that succeeded"
    );
    assert_eq!(net.allocated_count(), succeeded.len() as u64);

    let dels: Vec<Call> = adds
        .iter()
        .filter(|call| succeeded.contains_key(&call.container))
        .map(|call| call.with_command("DEL"))
        .collect();
    let (outcomes, _) = run_parallel(PROCESSES, &dels, &impatient);
    let mut remaining = BTreeMap::new();
    let mut retry = Vec::new();
    for (call, outcome) in dels.iter().zip(&outcomes) {
        match outcome.code() {
            None => {}
            Some(11) => {
                remaining.insert(call.container.clone(), succeeded[&call.container].clone());
                retry.push(call.clone());
            }
            Some(_) => panic!(
                "DEL of {} neither succeeded nor answered 11: {outcome:?}",
                call.container
            ),
        }
    }
    eprintln!(
        "busy_wait_ms 1, {} DELs: {} succeeded, {} answered 11",
        dels.len(),
        dels.len() - retry.len(),
        retry.len()
    );
    assert_eq!(
        net.stored(),
        remaining,
        "the store keeps exactly the DELs that answered 11"
    );
    assert_eq!(net.allocated_count(), remaining.len() as u64);

    let (outcomes, _) = run_parallel(PROCESSES, &retry, &patient);
    for outcome in &outcomes {
        assert!(
            outcome.status.success(),
            "DEL retried with the default wait: {outcome:?}"
        );
    }
    assert_eq!(net.stored(), BTreeMap::new());
    assert_eq!(net.allocated_count(), 0);
}

/// The write lock is not the only lock a call waits for: opening the store reads its schema,
/// which needs a read lock. Here another connection holds the database in exclusive locking
/// mode (as SQLite itself does briefly when the last connection checkpoints and removes the
/// write-ahead log, which is how the contention test above meets it). An ADD and a DEL with
/// `busy_wait_ms: 300` cannot even open the store: they must answer 11 (try again later), as
/// for the write lock, and change nothing.
#[test]
fn a_call_that_cannot_open_the_store_within_busy_wait_answers_11_too() {
    const WAIT_MS: u64 = 300;
    let net = Network::new("spiderpool-concurrency-open-busy");
    let config = net.config("1.0.0", Some(WAIT_MS));
    let kept = Call::new("ADD", 0, true);
    run(&kept, &config).address();
    let before = net.stored();
    let state_file = net.data.join(STATE_FILE);

    let holder = rusqlite::Connection::open(&state_file).expect("the store opens");
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN IMMEDIATE; SELECT count(*) FROM pools;")
        .expect("the database is locked exclusively");
    let blocked = [
        ("ADD", run(&Call::new("ADD", 1, false), &config)),
        ("DEL", run(&kept.with_command("DEL"), &config)),
    ];
    holder.execute_batch("ROLLBACK").expect("the lock is released");
    drop(holder);
    for (what, outcome) in &blocked {
        assert!(
            outcome.elapsed >= Duration::from_millis(WAIT_MS),
            "{what} gave up after {:?}",
            outcome.elapsed
        );
        assert_eq!(
            outcome.code(),
            Some(11),
            "{what} that cannot open the store within busy_wait_ms: {}",
            outcome.stdout.trim()
        );
    }
    assert_eq!(net.stored(), before, "nothing changed");
}
