# Sourced by scripts/regenerate.sh and scripts/check-reports.sh: the study
# folders to work on, into the array `dirs`. With arguments, those studies'
# folders (experiments/NAME and experiments/NAME/quick); without, every
# experiments/*/ and experiments/*/quick/. Only folders with a runs/ count.
study_dirs() {
    dirs=()
    local s d
    if [ $# -gt 0 ]; then
        for s in "$@"; do
            for d in "experiments/$s" "experiments/$s/quick"; do
                [ -d "$d/runs" ] && dirs+=("$d")
            done
        done
    else
        for d in experiments/*/ experiments/*/quick/; do
            d=${d%/}
            [ -d "$d/runs" ] && dirs+=("$d")
        done
    fi
    return 0
}
