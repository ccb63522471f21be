# Shared by build-control-plane.sh and build-node.sh (sourced, not run).

# log NAME MESSAGE...: a timestamped progress line on stderr.
log_line() { local name="$1"; shift; printf '[%s %(%H:%M:%S)T] %s\n' "$name" -1 "$*" >&2; }

# k8s_wrapper_module VERSION MODULE [REQUIRE...]: write go.mod in the current folder for a module
# that builds k8s.io/kubernetes commands. k8s.io/kubernetes requires its staging modules at
# v0.0.0 and replaces them with ./staging paths that exist only inside its repo; each is
# published as k8s.io/<name> v0.<minor>.<patch>, so the wrapper pins them to that.
# Prints the path of k8s.io/kubernetes's own go.mod (for callers that read other pins from it).
k8s_wrapper_module() {
  local version="$1" module="$2"
  shift 2
  local gomod_file staging_version
  gomod_file="$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
  [[ -f "$gomod_file" ]] || { echo "could not fetch k8s.io/kubernetes@$version from the Go module proxy" >&2; return 2; }
  staging_version="v0.${version#v1.}"
  {
    echo "module $module"
    echo
    echo "go $(sed -n 's/^go \(.*\)$/\1/p' "$gomod_file" | head -n1)"
    echo
    echo "require k8s.io/kubernetes $version"
    local extra
    for extra in "$@"; do echo "require $extra"; done
    echo
    awk '$2=="v0.0.0" && $1 ~ /^k8s\.io\// {print $1}' "$gomod_file" | sort -u |
      while read -r mod; do echo "replace $mod => $mod $staging_version"; done
  } > go.mod
  echo "$gomod_file"
}

# k8s_ldflags VERSION: link flags that make the binaries report VERSION (and strip them).
k8s_ldflags() {
  local version="$1" flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(cut -d. -f2 <<<"$version") -X $pkg.gitTreeState=clean"
  done
  echo "$flags"
}

# cache_complete FOLDER BINARY...: every binary is there, executable, and the build that made
# them finished (it writes .complete last).
cache_complete() {
  local folder="$1" binary
  shift
  for binary in "$@"; do [[ -x "$folder/$binary" ]] || return 1; done
  [[ -f "$folder/.complete" ]]
}
