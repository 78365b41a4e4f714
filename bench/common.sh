# Shared by the benchmark scripts (sourced from the repository root, with
# $root, $work, $size and $seed set): builds the release binary into $vl,
# and makes (once) and describes the deterministic corpus: $src, $bytes,
# $files.

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
