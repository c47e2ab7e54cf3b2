# experiments/lib.sh: what every study script sources. Each study is a list of commands:
#
#   train OUT python train_ae.py ... --out OUT   a training run: skipped when OUT finished it, continued
#                                                with --resume when OUT/last.pt exists, else started
#   produce FILE python evaluate.py ...             a command that writes FILE: skipped when FILE exists
#   always python ...                            a command that is cheap or must see the newest files
#
# DRY_RUN=1 prints each command (one line each, quoted as a shell reads it) and runs nothing: tests/
# test_experiments.py parses every printed line with its script's own parser. OMP_NUM_THREADS
# (default 1 here: studies run two commands at a time on a laptop) and PYTHON pass through; RUNS
# (default runs) is the folder the study writes into, relative to the repository's root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PYTHON=${PYTHON:-python}
RUNS=${RUNS:-runs}

quote_line() {  # the words as one line that a shell (or Python's shlex.split) reads back as the same words
  local word safe='^[A-Za-z0-9_./,=:+@%-]+$' out=()
  for word in "$@"; do  # a label with spaces (curve --run "DC-AE 1.5=DIR") goes in single quotes
    if [[ $word =~ $safe ]]; then out+=("$word"); else out+=("'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

run_line() {  # print (dry run) or run one command, timing it into $RUNS/experiments.log
  if [ "${DRY_RUN:-0}" = 1 ]; then
    quote_line "$@"
    return 0
  fi
  mkdir -p "$RUNS"
  local t0=$SECONDS
  echo "+ $(quote_line "$@")" >&2
  "$@"
  echo "$(date -u +%FT%TZ) $((SECONDS - t0)) s: $(quote_line "$@")" >> "$RUNS/experiments.log"
}

train() {  # train OUT CMD...: the run is done when OUT/done exists (written after a clean exit)
  local out=$1; shift
  [ "$1" = python ] && set -- "$PYTHON" "${@:2}"
  if [ -f "$out/done" ] && [ "${DRY_RUN:-0}" != 1 ]; then echo "done already: $out" >&2; return 0; fi
  if [ -f "$out/last.pt" ]; then  # continue the run; without --init-from, which only starts one
    local word words=() skip=0      # (train_ae.py refuses both; the run keeps its own --init-from)
    for word in "$@"; do
      if [ $skip = 1 ]; then skip=0; continue; fi
      case $word in --init-from) skip=1; continue ;; --init-from=*) continue ;; esac
      words+=("$word")
    done
    set -- "${words[@]}" --resume
  fi
  run_line "$@"
  [ "${DRY_RUN:-0}" = 1 ] || touch "$out/done"
}

produce() {  # produce FILE CMD...: skipped when FILE exists
  local file=$1; shift
  [ "$1" = python ] && set -- "$PYTHON" "${@:2}"
  if [ -f "$file" ] && [ "${DRY_RUN:-0}" != 1 ]; then echo "exists already: $file" >&2; return 0; fi
  run_line "$@"
}

always() {
  [ "$1" = python ] && set -- "$PYTHON" "${@:2}"
  run_line "$@"
}

wait_all() {  # wait for the commands started with &; fail if any failed
  local rc=0 pid
  started=0
  for pid in $(jobs -p); do wait "$pid" || rc=1; done
  return $rc
}

started=0
two_at_a_time() {  # call after each command started with &: the second of a pair waits for both
  started=$((started + 1))
  if [ $started = 2 ]; then wait_all; fi
}

autoencoders() {  # autoencoders DIR [FLAGS...]: the quick start's pair, DIR/ae (structured) and
  local dir=$1; shift  # DIR/ae-plain (the plain DC-AE), trained two at a time
  train "$dir/ae" python train_ae.py "$@" --out "$dir/ae" &
  train "$dir/ae-plain" python train_ae.py "$@" --no-structured --out "$dir/ae-plain" &
  wait_all
}

ae_length_run() {  # ae_length_run DIR ARM [SEED]: ae_length.sh's 8800-step AE of one arm (plain, structured
  local flags=()   # or max), a step file every 2200, in DIR/ARM; channel_tail.sh reads them for its seeds
  case $2 in
    plain) flags=(--no-structured) ;;
    max) flags=(--num-sample-latent-channels 2 --always-sample-max-channel) ;;
  esac
  if [ "${3:-0}" != 0 ]; then flags+=(--seed "$3"); fi  # seed 0, the default, keeps ae_length.sh's command
  train "$1/$2" python train_ae.py "${flags[@]}" --max-steps 8800 --save-every 2200 --out "$1/$2"
}
