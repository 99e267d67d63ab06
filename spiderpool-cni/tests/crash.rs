//! `spiderpool` plugin processes killed with SIGKILL at random points, alone and while many
//! others run, during ADD and DEL and while the first call creates the store. After every
//! batch of kills the store must open cleanly and be consistent: no address held twice, no
//! attachment holding two addresses, every stored allocation from an ADD that was started,
//! ALLOCATED-IP-COUNT equal to the rows, every answered call durable. At the end the store
//! passes SQLite's integrity check, its free-address index agrees with its allocations, and
//! further ADDs and DELs work.
//!
//! The kills are random; the seed is printed, and `SPIDERPOOL_CRASH_SEED=N` replays a run (up
//! to the timing of the processes).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spiderpool_cni::demo::TemporaryDir;
use spiderpool_cni::store::STATE_FILE;

use spiderpool_check::kit::documents::pool;
use spiderpool_check::kit::plugin::plugin;

const POOL: &str = "crash";

/// Kills that must land in a running ADD, and in a running DEL.
const KILLS_PER_COMMAND: usize = 100;
/// Kills that must land in the call that creates the store.
const CREATION_KILLS: usize = 30;

/// A small deterministic generator (xorshift64*), so that a seed replays a run.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("SPIDERPOOL_CRASH_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("the clock is after 1970");
                now.as_nanos() as u64 ^ u64::from(std::process::id())
            });
        eprintln!("SPIDERPOOL_CRASH_SEED={seed}");
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// A delay in `0..max`, to the microsecond.
    fn delay(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.below(max.as_micros() as u64 + 1))
    }
}

/// A pool file and a data directory.
struct Network {
    pools: PathBuf,
    data: PathBuf,
}

impl Network {
    fn new(base: &Path, data: &str) -> Network {
        let pools = base.join("pools.yaml");
        if !pools.exists() {
            std::fs::write(
                &pools,
                pool(
                    POOL,
                    "{subnet: 10.30.0.0/16, ips: [10.30.0.2-10.30.255.254], gateway: 10.30.0.1}",
                ),
            )
            .expect("the pool file is written");
        }
        Network {
            pools,
            data: base.join(data),
        }
    }

    fn config(&self) -> Vec<u8> {
        let config = json!({
            "cniVersion": "1.0.0",
            "name": "net",
            "type": "macvlan",
            "ipam": {"type": "spiderpool", "ippools_path": self.pools, "data_dir": self.data, "node_name": "n1"},
            "args": {"cni": {"annotations": {"ipam.spidernet.io/ippool": "{\"ipv4\":[\"crash\"]}"}}},
        });
        serde_json::to_vec(&config).expect("the configuration serializes")
    }

    /// Runs the CLI with `-o json`; it must succeed, which also shows that the store opens.
    fn cli(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
        spiderpool_check::kit::plugin::cli(&self.pools, &self.data, &args)
    }

    /// The stored allocations, container ID -> address, after checking every invariant the
    /// CLI can show: no address twice, no container twice, interface and owner as the ADD
    /// sent them, only containers some ADD was started for, and ALLOCATED-IP-COUNT (`ippool
    /// list`) equal to the rows of `ippool show`.
    fn checked_state(&self, started: &BTreeSet<usize>, context: &str) -> BTreeMap<usize, Ipv4Addr> {
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
            let container = row["container"].as_str().expect("a container");
            let index = index_of(container)
                .unwrap_or_else(|| panic!("{context}: {address} is held by {container}, which no ADD named"));
            assert!(
                started.contains(&index),
                "{context}: {address} is held by {container}, for which no ADD was started"
            );
            let call = Call::new("ADD", index);
            assert_eq!(row["interface"], "eth0", "{context}: {row}");
            assert_eq!(
                row["podUid"].as_str(),
                call.pod_uid.as_deref(),
                "{context}: {row}"
            );
            assert!(addresses.insert(address), "{context}: {address} is held twice");
            assert!(
                by_container.insert(index, address).is_none(),
                "{context}: {container} holds two addresses"
            );
        }
        let list = self.cli(&["ippool", "list"]);
        let count = list
            .as_array()
            .expect("list prints a list")
            .iter()
            .find(|row| row["name"] == POOL)
            .map_or(0, |row| row["allocatedIpCount"].as_u64().expect("a count"));
        assert_eq!(
            count,
            by_container.len() as u64,
            "{context}: ALLOCATED-IP-COUNT against the rows of ippool show"
        );
        by_container
    }
}

/// One plugin call. Even indexes are pods (the pod UID owns the allocation), odd ones bare
/// containers (the container ID does).
#[derive(Debug, Clone)]
struct Call {
    command: &'static str,
    index: usize,
    container: String,
    pod_uid: Option<String>,
}

impl Call {
    fn new(command: &'static str, index: usize) -> Call {
        Call {
            command,
            index,
            container: format!("crash{index:05}"),
            pod_uid: index
                .is_multiple_of(2)
                .then(|| format!("00000000-0000-4000-8000-{index:012}")),
        }
    }
}

fn index_of(container: &str) -> Option<usize> {
    container.strip_prefix("crash")?.parse().ok()
}

/// How a plugin process ended.
#[derive(Debug)]
enum Fate {
    /// SIGKILL ended it.
    Killed,
    /// It ended on its own (the kill, if any, came too late).
    Exited {
        success: bool,
        stdout: String,
        stderr: String,
        elapsed: Duration,
    },
}

impl Fate {
    /// The address a successful ADD answered.
    fn address(&self) -> Option<Ipv4Addr> {
        let Fate::Exited {
            success: true,
            stdout,
            ..
        } = self
        else {
            return None;
        };
        let result: Value = serde_json::from_str(stdout).ok()?;
        result["ips"][0]["address"]
            .as_str()?
            .trim_end_matches("/16")
            .parse()
            .ok()
    }
}

/// Runs one plugin process as a runtime does; with `kill_after`, sends it SIGKILL that long
/// after it was started (`Child::kill` is SIGKILL on Unix).
fn run(call: &Call, config: &[u8], kill_after: Option<Duration>) -> Fate {
    let started = Instant::now();
    let mut child = Command::new(plugin())
        .env_clear()
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", &call.container)
        .env("CNI_NETNS", format!("/var/run/netns/{}", call.container))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            match &call.pod_uid {
                Some(uid) => format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{};K8S_POD_UID={uid}",
                    call.index
                ),
                None => "IgnoreUnknown=1".into(),
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the plugin starts");
    // The configuration fits in the pipe's buffer, so this does not wait for the plugin.
    let _ = child.stdin.take().expect("stdin is piped").write_all(config);
    if let Some(delay) = kill_after {
        thread::sleep(delay.saturating_sub(started.elapsed()));
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("the plugin is waited for");
    if output.status.signal() == Some(9) {
        return Fate::Killed;
    }
    Fate::Exited {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Runs a call to completion; it must succeed.
fn complete(call: &Call, config: &[u8]) -> Fate {
    let fate = run(call, config, None);
    assert!(
        matches!(fate, Fate::Exited { success: true, .. }),
        "{} of {} failed: {fate:?}",
        call.command,
        call.container
    );
    fate
}

fn elapsed(fate: &Fate) -> Duration {
    match fate {
        Fate::Exited { elapsed, .. } => *elapsed,
        Fate::Killed => Duration::ZERO,
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// SQLite's own check of the file, and the free-address index (`runs`: maximal runs of held
/// addresses) against the allocations; read directly, because no CLI command shows them.
fn check_database(net: &Network, context: &str) {
    let connection = rusqlite::Connection::open_with_flags(
        net.data.join(STATE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the store opens read-only");
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("the integrity check runs");
    assert_eq!(integrity, "ok", "{context}: PRAGMA integrity_check");
    let value = |bytes: Vec<u8>| u128::from_be_bytes(bytes.try_into().expect("16-byte addresses"));
    let mut statement = connection
        .prepare("SELECT address FROM allocations WHERE pool = ?1")
        .expect("allocations are read");
    let held: BTreeSet<u128> = statement
        .query_map([POOL], |row| row.get::<_, Vec<u8>>(0))
        .expect("allocations are read")
        .map(|bytes| value(bytes.expect("a row")))
        .collect();
    let mut statement = connection
        .prepare("SELECT start, end FROM runs WHERE pool = ?1 ORDER BY start")
        .expect("runs are read");
    let runs: Vec<(u128, u128)> = statement
        .query_map([POOL], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .expect("runs are read")
        .map(|row| {
            let (start, end) = row.expect("a row");
            (value(start), value(end))
        })
        .collect();
    let mut covered = BTreeSet::new();
    let mut previous_end: Option<u128> = None;
    for &(start, end) in &runs {
        assert!(start <= end, "{context}: run {start}..{end} is reversed");
        if let Some(previous) = previous_end {
            assert!(
                start > previous + 1,
                "{context}: runs overlap or touch at {start}: not maximal"
            );
        }
        covered.extend(start..=end);
        previous_end = Some(end);
    }
    assert_eq!(
        covered, held,
        "{context}: the runs index covers exactly the held addresses"
    );
}

/// Kills the very first call on a new data directory (the one that creates the store) at
/// random points until 30 kills landed, each on a fresh directory (a round whose call ended
/// before its kill counts as a normal first call). Afterwards the CLI reads the directory,
/// the killed ADD retried succeeds, a second ADD gets another address, and DEL frees both.
#[test]
fn a_call_killed_while_it_creates_the_store_leaves_a_store_that_works() {
    let mut rng = Rng::from_env();
    let dir = TemporaryDir::new("spiderpool-crash-create").expect("a temporary directory");
    // A first call's lifetime, as the median of several on fresh directories: one alone may
    // be slow (the binary not yet in the page cache, a busy machine) and set every delay past
    // the calls it should kill.
    let lifetime = median(
        (0..5)
            .map(|index| {
                let calibration = Network::new(dir.path(), &format!("calibration-{index}"));
                elapsed(&complete(&Call::new("ADD", 0), &calibration.config()))
            })
            .collect(),
    );
    let mut killed = 0;
    let mut leftovers = Vec::new();
    let mut round = 0;
    while killed < CREATION_KILLS {
        round += 1;
        assert!(
            round <= 300,
            "only {killed} of {round} first calls were killed in time"
        );
        let net = Network::new(dir.path(), &format!("data-{round}"));
        let config = net.config();
        let delay = rng.delay(lifetime + lifetime / 5);
        let add = Call::new("ADD", 1);
        if matches!(run(&add, &config, Some(delay)), Fate::Killed) {
            killed += 1;
        }
        let context = format!("round {round}, killed after {delay:?}");
        let started = BTreeSet::from([1, 2]);
        net.checked_state(&started, &context);
        let again = complete(&add, &config).address().expect("an address");
        let other = complete(&Call::new("ADD", 2), &config)
            .address()
            .expect("an address");
        assert_ne!(again, other, "{context}");
        assert_eq!(
            net.checked_state(&started, &context),
            BTreeMap::from([(1, again), (2, other)]),
            "{context}"
        );
        complete(&Call::new("DEL", 1), &config);
        complete(&Call::new("DEL", 2), &config);
        assert_eq!(
            net.checked_state(&started, &context),
            BTreeMap::new(),
            "{context}"
        );
        check_database(&net, &context);
        for entry in std::fs::read_dir(&net.data).expect("the data directory is read") {
            let name = entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if !name.starts_with(STATE_FILE) {
                leftovers.push(format!("data-{round}/{name}"));
            }
        }
    }
    eprintln!(
        "store creation: {killed} of {round} first calls killed (first call takes {lifetime:.1?}); \
         files left beside the store: {leftovers:?}"
    );
}

/// At least 100 ADDs and 100 DELs killed at random points (from right after exec to the end of
/// the call), in batches: a process alone, or up to 24 at once with the kills among them, and
/// with ADD retries and DELs of attachments that hold addresses. Calls that were not killed
/// must succeed and be durable: an answered ADD's address is stored for its container, an
/// answered DEL leaves it nothing. The state is checked after every batch.
#[test]
fn calls_killed_at_random_points_during_add_and_del_leave_a_consistent_store() {
    let mut rng = Rng::from_env();
    let dir = TemporaryDir::new("spiderpool-crash").expect("a temporary directory");
    let net = Network::new(dir.path(), "data");
    let config = net.config();
    let mut started: BTreeSet<usize> = BTreeSet::new();
    let mut next_index = 0;

    // How long a whole call takes here: the kills are spread over it.
    let mut times = Vec::new();
    for _ in 0..5 {
        started.insert(next_index);
        times.push(elapsed(&complete(&Call::new("ADD", next_index), &config)));
        next_index += 1;
    }
    let lifetime = median(times);
    let mut holding = net.checked_state(&started, "calibration");
    // How long a call takes alone, and in the batches: learnt from the calls not killed.
    let (mut alone_time, mut batch_time) = (lifetime, lifetime);

    #[derive(Default, Debug)]
    struct Tally {
        killed_add: usize,
        killed_del: usize,
        /// Killed ADDs of a new attachment, alone on it in their batch: stored or not after.
        add_committed: usize,
        add_not_committed: usize,
        /// Killed DELs of a held attachment, alone on it in their batch: released or not.
        del_committed: usize,
        del_not_committed: usize,
        completed: usize,
        processes: usize,
        batches: usize,
    }
    let mut tally = Tally::default();
    let test_started = Instant::now();
    // Until enough kills landed, and some of them on each side of the commit.
    while tally.killed_add < KILLS_PER_COMMAND
        || tally.killed_del < KILLS_PER_COMMAND
        || tally.add_committed.min(tally.add_not_committed) < 3
        || tally.del_committed.min(tally.del_not_committed) < 3
    {
        assert!(
            tally.batches < 2_000,
            "the kills keep missing the calls: {tally:?}"
        );
        tally.batches += 1;
        let size = if rng.percent(40) {
            1
        } else {
            2 + rng.below(23) as usize
        };
        let held: Vec<usize> = holding.keys().copied().collect();
        let mut batch: Vec<(Call, Option<Duration>)> = Vec::new();
        for _ in 0..size {
            let call = if held.is_empty() || rng.percent(45) {
                next_index += 1;
                Call::new("ADD", next_index - 1)
            } else if rng.percent(65) {
                Call::new("DEL", held[rng.below(held.len() as u64) as usize])
            } else {
                Call::new("ADD", held[rng.below(held.len() as u64) as usize])
            };
            if call.command == "ADD" {
                started.insert(call.index);
            }
            // Kills at three kinds of points: 40 % in the first 3 ms (exec, start-up, reading
            // the configuration, opening the store), 30 % anywhere in a call of this batch
            // (longer the more processes share the CPUs and wait for the write lock), 30 %
            // around the end of a call that runs alone (its transaction, commit and close).
            let kill = match rng.below(100) {
                0..40 => Some(rng.delay(Duration::from_millis(3))),
                40..70 => Some(rng.delay(batch_time * 3 / 2)),
                70..100 => Some(alone_time / 2 + rng.delay(alone_time * 3 / 5)),
                _ => None,
            };
            let kill = if rng.percent(80) { kill } else { None };
            batch.push((call, kill));
        }
        let fates: Vec<Fate> = thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(call, kill)| scope.spawn(|| run(call, &config, *kill)))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("no runner panicked"))
                .collect()
        });
        tally.processes += batch.len();

        let context = format!("batch {} ({tally:?})", tally.batches);
        let after = net.checked_state(&started, &context);
        let mut calls_on: BTreeMap<usize, usize> = BTreeMap::new();
        for (call, _) in &batch {
            *calls_on.entry(call.index).or_default() += 1;
        }
        for ((call, kill), fate) in batch.iter().zip(&fates) {
            let alone = calls_on[&call.index] == 1;
            match (call.command, fate) {
                ("ADD", Fate::Killed) => {
                    tally.killed_add += 1;
                    if alone && !holding.contains_key(&call.index) {
                        if after.contains_key(&call.index) {
                            tally.add_committed += 1;
                        } else {
                            tally.add_not_committed += 1;
                        }
                    }
                }
                ("DEL", Fate::Killed) => {
                    tally.killed_del += 1;
                    if alone {
                        if after.contains_key(&call.index) {
                            tally.del_not_committed += 1;
                        } else {
                            tally.del_committed += 1;
                        }
                    }
                }
                (
                    command,
                    Fate::Exited {
                        success,
                        elapsed,
                        stdout,
                        stderr,
                    },
                ) => {
                    tally.completed += 1;
                    if size == 1 {
                        alone_time = (alone_time * 3 + *elapsed) / 4;
                    } else {
                        batch_time = (batch_time * 7 + *elapsed) / 8;
                    }
                    assert!(
                        *success,
                        "{context}: {command} of {} (kill planned at {kill:?}) failed: {} {}",
                        call.container,
                        stdout.trim(),
                        stderr.trim()
                    );
                    if alone && command == "ADD" {
                        let answered = fate.address().expect("an answered address");
                        assert_eq!(
                            after.get(&call.index),
                            Some(&answered),
                            "{context}: ADD of {} answered {answered}",
                            call.container
                        );
                        if let Some(before) = holding.get(&call.index) {
                            assert_eq!(
                                *before, answered,
                                "{context}: a retried ADD moved {}",
                                call.container
                            );
                        }
                    }
                    if alone && command == "DEL" {
                        assert!(
                            !after.contains_key(&call.index),
                            "{context}: DEL of {} succeeded, but it still holds an address",
                            call.container
                        );
                    }
                }
                (other, _) => unreachable!("{other}"),
            }
        }
        holding = after;
    }
    let kill_time = test_started.elapsed();
    check_database(&net, "after the kills");

    // The store works: new ADDs get new addresses, every attachment ever started is released
    // by DEL, and afterwards nothing is held and the indexes are empty.
    let mut fresh = BTreeSet::new();
    for _ in 0..10 {
        started.insert(next_index);
        let address = complete(&Call::new("ADD", next_index), &config)
            .address()
            .expect("an address");
        assert!(
            !holding.values().any(|held| *held == address),
            "{address} handed out twice"
        );
        assert!(fresh.insert(address), "{address} handed out twice");
        next_index += 1;
    }
    let everything: Vec<usize> = started.iter().copied().collect();
    thread::scope(|scope| {
        for chunk in everything.chunks(everything.len().div_ceil(16)) {
            let config = &config;
            scope.spawn(move || {
                for &index in chunk {
                    complete(&Call::new("DEL", index), config);
                }
            });
        }
    });
    assert_eq!(
        net.checked_state(&started, "after DEL of everything"),
        BTreeMap::new()
    );
    check_database(&net, "after DEL of everything");
    eprintln!(
        "crash: {tally:?}; {} attachments started; a call takes {alone_time:.1?} alone, {batch_time:.1?} in \
         batches; kills took {kill_time:.1?}",
        started.len()
    );
}
