#!/usr/bin/env bash
# The image's entry point (the RayJob runs it too): fetch what earlier runs produced, reproduce,
# publish what this run produced. Arguments go to `dvc repro` (none: every stage).
#
#   DVC_REMOTE_URL     the DVC remote (s3://..., a mounted folder); unset: the one .dvc/config names
#   TRAINYARD_RESULTS  a folder every run reaches (a volume): dvc.lock and the small, git-tracked
#                      results (metrics/, plots/, models/*/train_run.json) of the last run; the next
#                      run starts from that dvc.lock, so unchanged stages are pulled, not rerun.
#                      Default: $TRAINYARD_STORE/results when the store is a local path.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[entrypoint] $*"; }

if [[ -n "${DVC_REMOTE_URL:-}" ]]; then
    dvc remote add --local --force --default run "$DVC_REMOTE_URL"
fi
results="${TRAINYARD_RESULTS:-}"
if [[ -z "$results" && -n "${TRAINYARD_STORE:-}" && "$TRAINYARD_STORE" != *://* ]]; then
    results="$TRAINYARD_STORE/results"
fi

# 1. start from the last run's lock file, and pull the outputs it names (missing ones rerun)
if [[ -n "$results" && -f "$results/dvc.lock" ]]; then
    cp "$results/dvc.lock" dvc.lock
    for f in metrics plots models; do
        if [[ -d "$results/$f" ]]; then cp -r "$results/$f" .; fi
    done
    log "restored dvc.lock and the last run's results from $results"
fi
if [[ -f dvc.lock ]]; then
    log "dvc pull: the outputs dvc.lock names, from the remote"
    dvc pull --allow-missing
fi

# 2. reproduce
log "dvc repro $*"
dvc repro "$@"

# 3. publish: cached outputs to the remote, the lock file and small results beside them
log "dvc push"
dvc push
if [[ -n "$results" ]]; then
    mkdir -p "$results"
    tmp="$(mktemp -d "$results/.incoming-XXXXXX")"
    cp dvc.lock "$tmp/"
    for f in metrics plots; do
        if [[ -d "$f" ]]; then cp -r "$f" "$tmp/"; fi
    done
    for f in models/*/train_run.json; do
        if [[ -f "$f" ]]; then mkdir -p "$tmp/$(dirname "$f")" && cp "$f" "$tmp/$f"; fi
    done
    # moved in only once all is copied: a failed copy leaves the previous results as they were
    for f in dvc.lock metrics plots models; do rm -rf "${results:?}/$f"; done
    for f in "$tmp"/*; do mv "$f" "$results/"; done
    rmdir "$tmp"
    log "results of this run -> $results"
fi
