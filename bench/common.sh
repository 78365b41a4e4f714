# Shared by the benchmark scripts (sourced from the repository root, with
# $root, $work, $size and $seed set): builds the release binary into $vl,
# and makes (once) and describes the deterministic corpus: $src, $bytes,
# $files. `local_config` writes a configuration for a local repository.

# local_config DIR NAME=PATH...: DIR/config.toml for host "bench", a local
# repository in DIR/repo, state in DIR/state and the local key; one job per
# NAME=PATH.
local_config() {
    local dir=$1 job
    shift
    {
        printf '[agent]\nhost = "bench"\nstate-dir = "%s"\n\n' "$dir/state"
        printf '[repository]\ntype = "local"\npath = "%s"\n\n' "$dir/repo"
        printf '[key]\nstorage = "file"\n'
        for job in "$@"; do
            printf '\n[[jobs]]\nname = "%s"\npaths = ["%s"]\n' "${job%%=*}" "${job#*=}"
        done
    } >"$dir/config.toml"
}

echo "==> building vaultline (release)"
cargo build --release --locked -q -p vaultline-agent
vl=$root/target/release/vaultline

corpus=$work/corpus-$size-$seed
if [ ! -f "$corpus/.complete" ]; then
    echo "==> generating corpus: make-corpus.sh $corpus $size $seed"
    rm -rf "$corpus"
    bench/make-corpus.sh "$corpus/tree" "$size" "$seed"
    touch "$corpus/.complete"
fi
src=$corpus/tree
bytes=$(find "$src" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
files=$(find "$src" -type f | wc -l)
echo "==> corpus $src: $files files, $bytes bytes"
