#!/usr/bin/env bash
# Mutation proof: the test suite must catch deliberate breakages.
#
# Copies the committed workspace (git HEAD; --worktree for the working tree)
# to a work directory, checks that the suite passes there unmutated, then for
# each mutant in scripts/mutants/mutants.txt applies it, runs the server's
# tests (`cargo nextest run -p orchestratord`, stopping at the first failure:
# end-to-end, property,
# model-based, determinism and, when present, pact provider verification),
# restores the file, and prints `mutant | caught by | result`. A mutant with a
# `run` line is judged by that command instead (run in the copy; it must fail
# under the mutant and pass without it, which the baseline checks), for
# breakages only a gate sees, such as a breaking contract change whose
# documents were regenerated. Exits non-zero
# if any mutant survives (or no longer applies, or does not build).
#
# The build goes to its own target directory, by default
# target/mutants of this repository, reused across mutants and runs so every
# mutant is an incremental build; it never touches target/debug.
#
# usage: scripts/mutants/run.sh [--worktree] [--skip-baseline] [--dry-run] [--only NAME]...
#        --dry-run only checks that every mutant applies (no build, no tests)
# env:   MUTANTS_TARGET_DIR (default <repo>/target/mutants)
#        MUTANTS_WORKDIR    (default ${TMPDIR:-/tmp}/orchqueue-mutants/<checkout>: one
#                           copy per checkout, so two clones never share one)
#        MUTANTS_TEST_ARGS  (extra args for cargo nextest run, e.g. "--test tasks_e2e")
#        MUTANTS_TIMEOUT    (seconds per suite run, default 1800)
set -euo pipefail

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
list="$repo/scripts/mutants/mutants.txt"
target_dir=${MUTANTS_TARGET_DIR:-$repo/target/mutants}
work=${MUTANTS_WORKDIR:-${TMPDIR:-/tmp}/orchqueue-mutants/$(printf '%s' "$repo" | sha256sum | cut -c1-12)}
timeout_s=${MUTANTS_TIMEOUT:-1800}
from_worktree=0
baseline=1
dry_run=0
only=()
while [ $# -gt 0 ]; do
    case "$1" in
        --worktree) from_worktree=1 ;;
        --skip-baseline) baseline=0 ;;
        --dry-run) dry_run=1; baseline=0 ;;
        --only) only+=("$2"); shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

ws="$work/ws"
logs="$work/logs"
mkdir -p "$ws" "$logs"

# --- 1. the copy -------------------------------------------------------------
# Sync by content into a persistent directory: only files whose content
# changed get a new mtime, so cargo rebuilds only what changed since last run.
stage="$work/stage"
rm -rf "$stage"
mkdir -p "$stage"
if [ "$from_worktree" = 1 ]; then
    (cd "$repo" && git ls-files -co --exclude-standard -z) |
        (cd "$repo" && xargs -0 -I{} cp --parents {} "$stage" 2>/dev/null || true)
    source_desc="working tree of $repo"
else
    git -C "$repo" archive HEAD | tar -x -C "$stage"
    source_desc="$(git -C "$repo" rev-parse --short HEAD) of $repo"
fi
(cd "$stage" && find . -type f) | while IFS= read -r f; do
    if ! cmp -s "$stage/$f" "$ws/$f"; then
        mkdir -p "$(dirname "$ws/$f")"
        cp "$stage/$f" "$ws/$f"
    fi
done
(cd "$ws" && find . -type f) | while IFS= read -r f; do
    [ -e "$stage/$f" ] || rm -f "$ws/$f"
done
rm -rf "$stage"

export CARGO_TARGET_DIR="$target_dir"
export RUST_BACKTRACE=0

# Runs the server's tests in the copy with nextest (binaries in parallel); prints
# failed tests as `binary::test`, one a line, to $2; returns the status (124 on
# timeout). With $3 = first, it stops at the first failure: a mutant needs one
# test to catch it, and the rest of the suite would only cost time.
run_suite() {
    local log=$1 failed=$2 stop=${3:-all} status=0
    local fail_args=(--no-fail-fast)
    [ "$stop" = first ] && fail_args=(--max-fail 1:immediate)
    # shellcheck disable=SC2086
    (cd "$ws" && timeout "$timeout_s" cargo nextest run -p orchestratord --profile ci \
        "${fail_args[@]}" --status-level fail --final-status-level fail \
        ${MUTANTS_TEST_ARGS:-} >"$log" 2>&1) || status=$?
    # nextest's result lines: `FAIL [ 0.1s] (3/90) orchestratord::tasks_e2e name`.
    awk '$1 ~ /^(FAIL|TIMEOUT|SIGSEGV|SIGABRT|SIGKILL|ABORT)$/ && /\] / { print $(NF - 1) "::" $NF }' "$log" | sort -u >"$failed"
    return $status
}

elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

echo "mutation proof: $source_desc"
echo "copy: $ws   target: $target_dir"

# Parse mutants.txt into parallel arrays (one entry per substitution).
names=() whys=() runs=() m_name=() m_file=() m_from=() m_to=()
current="" file="" from=""
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        ''|'#'*) continue ;;
        '['*']') current=${line#[}; current=${current%]}; names+=("$current"); whys+=(""); runs+=("") ;;
        *)
            key=${line%%=*}; key=${key//[[:space:]]/}
            value=${line#*=}; value=${value#"${value%%[![:space:]]*}"}
            case "$key" in
                why) whys[${#whys[@]}-1]=$value ;;
                run) runs[${#runs[@]}-1]=$value ;;
                file) file=$value ;;
                from) from=$value ;;
                to) m_name+=("$current"); m_file+=("$file"); m_from+=("$from"); m_to+=("$value") ;;
                *) echo "mutants.txt: unknown key $key" >&2; exit 2 ;;
            esac
            ;;
    esac
done <"$list"

# Runs a mutant's `run` command in the copy, logging to $2; the command may
# regenerate the documents, which are restored afterwards. Returns its status.
run_command() {
    local command=$1 log=$2 status=0
    rm -rf "$work/generated" && mkdir -p "$work/generated"
    cp -a "$ws/contracts/openapi" "$ws/contracts/schemas" "$work/generated/"
    (cd "$ws" && timeout "$timeout_s" bash -c "$command" >"$log" 2>&1) || status=$?
    rm -rf "$ws/contracts/openapi" "$ws/contracts/schemas"
    cp -a "$work/generated/openapi" "$work/generated/schemas" "$ws/contracts/"
    return $status
}

selected() { [ ${#only[@]} -eq 0 ] || [[ " ${only[*]} " == *" $1 "* ]]; }

# --- 2. baseline --------------------------------------------------------------
if [ "$baseline" = 1 ]; then
    t0=$(date +%s)
    if ! run_suite "$logs/baseline.log" "$logs/baseline.failed"; then
        echo "the unmutated suite fails ($(elapsed "$t0")); see $logs/baseline.log:" >&2
        sed 's/^/  /' "$logs/baseline.failed" >&2
        tail -n 30 "$logs/baseline.log" >&2
        exit 2
    fi
    echo "baseline: suite passes ($(elapsed "$t0"))"
    # A `run` judge must pass unmutated, or its failure under a mutant proves nothing.
    for i in "${!names[@]}"; do
        [ -n "${runs[$i]}" ] && selected "${names[$i]}" || continue
        t0=$(date +%s)
        if ! run_command "${runs[$i]}" "$logs/${names[$i]}.baseline.log"; then
            echo "the judge of ${names[$i]} fails unmutated ($(elapsed "$t0")): ${runs[$i]}" >&2
            tail -n 30 "$logs/${names[$i]}.baseline.log" >&2
            exit 2
        fi
        echo "baseline: the judge of ${names[$i]} passes ($(elapsed "$t0"))"
    done
fi

# --- 3. mutants ---------------------------------------------------------------

# Replace the single occurrence of FROM by TO in a file (fresh mtime).
substitute() {
    FROM=$2 TO=$3 perl -0777 -i -pe '
        BEGIN { ($from, $to) = map { (my $s = $_) =~ s/\\n/\n/g; $s } @ENV{qw(FROM TO)} }
        $n = () = /\Q$from\E/g;
        if ($n != 1) { print STDERR "found $n times\n"; $fail = 1 }
        else { s/\Q$from\E/$to/ }
        END { exit 3 if $fail }
    ' "$1"
}

results=()
survived=0
total0=$(date +%s)
for i in "${!names[@]}"; do
    name=${names[$i]}
    selected "$name" || continue
    t0=$(date +%s)
    backups=()
    applied=1
    for j in "${!m_name[@]}"; do
        [ "${m_name[$j]}" = "$name" ] || continue
        f="$ws/${m_file[$j]}"
        [ -f "$f.orig" ] || cp "$f" "$f.orig"
        backups+=("$f")
        if ! substitute "$f" "${m_from[$j]}" "${m_to[$j]}" 2>"$logs/$name.apply"; then
            echo "$name: '${m_from[$j]}' in ${m_file[$j]}: $(cat "$logs/$name.apply")" >&2
            applied=0
        fi
    done
    if [ "$applied" = 1 ] && [ "$dry_run" = 1 ]; then
        result="applies"; caught="-"
    elif [ "$applied" = 1 ]; then
        echo "== $name: ${whys[$i]}"
        status=0
        if [ -n "${runs[$i]}" ]; then
            : >"$logs/$name.failed"
            run_command "${runs[$i]}" "$logs/$name.log" || status=$?
        else
            run_suite "$logs/$name.log" "$logs/$name.failed" first || status=$?
        fi
        if [ -n "${runs[$i]}" ] && [ "$status" != 0 ] && [ "$status" != 124 ]; then
            result="caught"
            # The first line that names a problem: a BREAKING rule, or an error.
            caught="$(grep -m1 -E '^ *BREAKING|^error|^- \[ \]' "$logs/$name.log" | sed 's/^ *//' | cut -c1-160 || true)"
            caught="\`${runs[$i]}\` failed: ${caught:-see $logs/$name.log}"
        elif grep -q '^error\(\[E[0-9]*\]\)\?: could not compile\|^error\[E' "$logs/$name.log"; then
            result="BUILD FAILED"; caught="(see $logs/$name.log)"; survived=$((survived + 1))
        elif [ "$status" = 124 ]; then
            result="TIMEOUT"; caught="-"; survived=$((survived + 1))
        elif [ -s "$logs/$name.failed" ]; then
            result="caught"
            caught=$(head -n 6 "$logs/$name.failed" | paste -sd ' ')
            more=$(($(wc -l <"$logs/$name.failed") - 6))
            [ "$more" -le 0 ] || caught="$caught (+$more more)"
        elif [ "$status" != 0 ]; then
            result="caught"; caught="(the suite failed: see $logs/$name.log)"
        else
            result="SURVIVED"; caught="-"; survived=$((survived + 1))
        fi
    else
        result="DOES NOT APPLY"; caught="-"; survived=$((survived + 1))
    fi
    # Restore with a fresh mtime so cargo rebuilds the original next time.
    for f in "${backups[@]}"; do
        cp "$f.orig" "$f" && rm -f "$f.orig" && touch "$f"
    done
    results+=("$name | $caught | $result ($(elapsed "$t0"))")
    [ "$dry_run" = 1 ] || echo "   $result in $(elapsed "$t0")"
done

echo
echo "mutant | caught by | result"
echo "--- | --- | ---"
printf '%s\n' "${results[@]}"
echo
echo "total for the mutants: $(elapsed "$total0"); logs in $logs"
if [ "$survived" -gt 0 ]; then
    echo "$survived mutant(s) not caught" >&2
    exit 1
fi
if [ "$dry_run" = 1 ]; then echo "every mutant applies"; else echo "every mutant was caught"; fi
