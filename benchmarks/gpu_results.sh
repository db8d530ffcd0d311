#!/usr/bin/env bash
# Every GPU result of benchmarks/README.md for this machine's GPU, most telling first, each
# under its own time limit (seconds, scaled by SCALE, default 1) so that one slow case cannot
# take the rest; what each writes goes to benchmarks/results/ under the device's name. Each
# script saves its JSON after every case, so a step stopped at its limit keeps what it
# measured. STEPS: which of the numbered steps to run (default all; 1-3 take at most 540 s,
# 4-5 at most 550 s).
#
#     bash benchmarks/gpu_results.sh [SCALE [STEPS...]]
#
# 1. hand-written Pallas kernels: the copy through Pallas (Triton, and Mosaic GPU with the
#    TMA) and the bare stencils (the bound)
# 2. the engine's explicit steps at 512^3 through XLA's fusion and through its kernels
# 3. the kernels against XLA's step, compiled for the GPU (tests/test_kernels.py)
# 4. the kernels' tiles and warps
# 5. ilsim bench with the run's defaults, one step at each largest grid
set -u
cd "$(dirname "$0")/.."
scale=${1:-1}
shift $(($# > 0 ? 1 : 0))
steps=${*:-1 2 3 4 5}
export PYTHONUNBUFFERED=1
name=$(cd benchmarks && python -c "from common import device_name; print(device_name())")
results=benchmarks/results
matrix=(--grids 512^3 --fields 1 4 --dtypes float32 --references xla
    --steppers euler euler-compensated ssprk3 ssprk3-compensated)

step() {
    local limit
    limit=$(python -c "print(round($1 * $scale))")
    shift
    echo "== $* (at most ${limit} s)"
    timeout --signal=INT --kill-after=20 "$limit" "$@"
    echo "== exit status $?"
}

wanted() { [[ " $steps " == *" $1 "* ]]; }

echo "device $name; steps $steps"
wanted 1 && step 150 python benchmarks/bench_pallas_stencil.py
if wanted 2; then
    for kernels in xla pallas; do
        step 120 python benchmarks/bench_solver.py "${matrix[@]}" --kernels "$kernels" \
            --output "$results/bench_solver-$name-stages_$kernels.json"
    done
fi
wanted 3 && step 150 python -m pytest -q -n 0 -p no:cacheprovider tests/test_kernels.py
wanted 4 && step 150 python benchmarks/bench_kernel_tiles.py --schemes ssprk3 euler
wanted 5 && step 400 ilsim bench --largest --overwrite -o "$results/ilsim_bench-$name.json"
exit 0
