//! `orch-bench instructions`: instructions per pure queue and placement
//! operation at 10, 1k, 10k and 100k queued tasks, counted by valgrind's
//! callgrind (repeatable whatever else the machine does). The command runs
//! itself under valgrind once per depth, with collection switched on only
//! inside [`measured_ops`], and prints the count per operation and its ratio
//! to the count at the smallest depth: the flat-cost figure of issue 14.

use std::process::Command;

use anyhow::{Context, bail};
use contracts::Priority;
use contracts::config::FullPolicy;
use orchestratord::placement::{self, ReplicaLoad};
use orchestratord::queue::{PoolQueue, Share};
use orchestratord::store::TaskKey;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct InstructionsArgs {
    /// Queue depths to measure at.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000,100000")]
    depths: Vec<usize>,
    /// Operations of each kind measured at each depth.
    #[arg(long, default_value_t = 1000)]
    ops: usize,
    /// Tenants the queued tasks belong to, in turn: each has its line in
    /// each priority (ORCH-3015), and a position is computed over them all.
    #[arg(long, default_value_t = 8)]
    tenants: usize,
    /// Run the operations once at `--depths`' first value, uncounted (what
    /// valgrind runs; not for people).
    #[arg(long, hide = true)]
    child: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// The operation kinds counted, in the order `measured_ops` runs them.
const KINDS: [&str; 4] = [
    "admit + dispatch pop",
    "cancel of a queued task",
    "position of a queued task",
    "placement over 8 replicas",
];

pub fn run(args: &InstructionsArgs) -> anyhow::Result<()> {
    if args.child {
        let depth = *args.depths.first().context("--depths is empty")?;
        let kind = std::env::var("ORCH_BENCH_KIND")?.parse::<usize>()?;
        let key = |n: usize| key(n, args.tenants.max(1));
        let mut queue = filled(depth, key);
        let keys: Vec<TaskKey> = (depth..depth + args.ops).map(key).collect();
        // The middle of the queue: for a cancel, the key the queue holds there
        // at that operation (the one admitted `depth / 2` earlier); for a
        // position, one of the middle half, which stays.
        let middle: Vec<TaskKey> = (0..args.ops)
            .map(|op| match kind {
                1 => key(depth / 2 + op),
                _ => key(depth / 2 + op % (depth / 2).max(1)),
            })
            .collect();
        let replicas: Vec<String> = (0..8).map(|r| format!("replica-{r}")).collect();
        measured_ops(&mut queue, &keys, &middle, &replicas, kind);
        std::hint::black_box(queue);
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for &depth in &args.depths {
        let mut per_op = Vec::new();
        for kind in 0..KINDS.len() {
            let counted = callgrind(&exe, depth, args, kind)?;
            per_op.push(counted as f64 / args.ops as f64);
        }
        rows.push((depth, per_op));
    }
    let base = rows
        .first()
        .map(|(_, per_op)| per_op.clone())
        .unwrap_or_default();
    if args.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(depth, per_op)| {
                json!({
                    "tenants": args.tenants,
                    "queued": depth,
                    "instructions_per_op": KINDS.iter().zip(per_op).map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "instructions per operation (valgrind callgrind), {} tenants, ratio to {} queued",
        args.tenants, rows[0].0
    );
    print!("{:>8}", "queued");
    for kind in KINDS {
        print!(" | {kind:>28}");
    }
    println!();
    for (depth, per_op) in &rows {
        print!("{depth:>8}");
        for (value, base) in per_op.iter().zip(&base) {
            print!(" | {:>16.0} ({:>6.2}×)", value, value / base);
        }
        println!();
    }
    Ok(())
}

/// Total instructions callgrind counted inside [`measured_ops`].
fn callgrind(
    exe: &std::path::Path,
    depth: usize,
    args: &InstructionsArgs,
    kind: usize,
) -> anyhow::Result<u64> {
    let out_file = tempfile::NamedTempFile::new()?;
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg("--toggle-collect=*measured_ops*")
        .arg(format!(
            "--callgrind-out-file={}",
            out_file.path().display()
        ))
        .arg(exe)
        .args(["instructions", "--child", "--ops", &args.ops.to_string()])
        .arg(format!("--tenants={}", args.tenants))
        .arg(format!("--depths={depth}"))
        .env("ORCH_BENCH_KIND", kind.to_string())
        .output()
        .context("could not run valgrind: install it (`apt-get install valgrind`)")?;
    if !output.status.success() {
        bail!(
            "valgrind failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = std::fs::read_to_string(out_file.path())?;
    text.lines()
        .find_map(|line| line.strip_prefix("totals: "))
        .or_else(|| text.lines().find_map(|line| line.strip_prefix("summary: ")))
        .context("callgrind wrote no totals")?
        .trim()
        .parse()
        .context("callgrind's totals are not a number")
}

/// A 64-token prompt and 64 tokens to generate, at weight 1.
const SHARE: Share = Share {
    cost: 128,
    weight: 1,
};

fn key(n: usize, tenants: usize) -> TaskKey {
    TaskKey::new(
        format!("tenant-{}", n % tenants),
        "bench",
        format!("t-{n:032x}"),
    )
}

/// A queue of `depth` tasks, one in four batch, as admissions leave it.
fn filled(depth: usize, key: impl Fn(usize) -> TaskKey) -> PoolQueue<TaskKey> {
    let mut queue = PoolQueue::new(u32::MAX, FullPolicy::Reject, 8);
    for n in 0..depth {
        queue.admit(key(n), priority_of(n), SHARE);
    }
    queue
}

fn priority_of(n: usize) -> Priority {
    if n % 4 == 3 {
        Priority::Batch
    } else {
        Priority::Interactive
    }
}

/// One operation of kind `kind` per key of `keys` (new arrivals) on
/// `queue`, whose depth stays the same: the only code callgrind counts (with
/// what it calls). Keys are made beforehand, so their formatting is not
/// counted; their clones into the queue are.
#[inline(never)]
#[unsafe(no_mangle)]
pub fn measured_ops(
    queue: &mut PoolQueue<TaskKey>,
    keys: &[TaskKey],
    middle: &[TaskKey],
    replicas: &[String],
    kind: usize,
) {
    let depth = queue.len();
    for (op, key) in keys.iter().enumerate() {
        let n = depth + op;
        match kind {
            0 => {
                queue.admit(key.clone(), priority_of(n), SHARE);
                std::hint::black_box(queue.pop_next_where(|k| &*k.tenant != "tenant-none"));
            }
            1 => {
                // A task from the middle of the queue leaves, a new one arrives.
                std::hint::black_box(queue.remove(&middle[op]));
                queue.admit(key.clone(), priority_of(n), SHARE);
            }
            2 => {
                std::hint::black_box(queue.position(&middle[op]));
            }
            _ => {
                let loads: Vec<ReplicaLoad<'_>> = replicas
                    .iter()
                    .enumerate()
                    .map(|(i, id)| ReplicaLoad {
                        id,
                        ready: i != 3,
                        active: ((op + i) % 4) as u32,
                        slots: 4,
                    })
                    .collect();
                std::hint::black_box(placement::choose(&loads, None, Some("replica-1")));
            }
        }
    }
}
