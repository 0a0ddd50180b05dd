# Sourced by scripts/serve and scripts/test: create or refresh .venv, then
# activate it. Re-installs only when pyproject.toml changed since last time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "pushskip needs Python 3.11 or newer (tried: $python; set PYTHON=...)" >&2
  exit 1
fi
venv="${PUSHSKIP_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtualenv in $venv" >&2
  "$python" -m venv "$venv"
fi
extras="${PUSHSKIP_EXTRAS:-}"
stamp="$venv/.pushskip-installed-${extras:-base}"
want="$(sha256sum < pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing pushskip${extras:+[$extras]} into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
