# Setup steps shared by the project's scripts; source it from the repository root.

VENV="${VENV:-.venv}"
# What the demo needs from Debian: Prometheus (and promtool); LuaLaTeX for the appendices, with fonts that print
# names in any script (Noto CJK, Symbola for emoji); pdftotext; systemd-analyze (checks the shipped unit).
SYSTEM_PACKAGES=(prometheus texlive-luatex texlive-latex-recommended texlive-science texlive-pictures lmodern latexmk
  fonts-noto-cjk fonts-symbola poppler-utils systemd)
# What the tests need besides: the paper classes fragments are checked in (IEEEtran and acmart, with the packages
# and fonts acmart loads); VictoriaMetrics, the long-term store the reporter is tested against besides Prometheus;
# Slurm and munge, a real one-node cluster whose jobs the shipped prolog and epilog make runs (tests/deploy).
TEST_PACKAGES=(texlive-publishers texlive-latex-extra texlive-fonts-extra texlive-plain-generic victoria-metrics
  slurmctld slurmd slurm-client munge)

# Debian packages: installed when missing and running as root, otherwise the exact command is printed.
install_apt_packages() {
  local missing=()
  local package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    return 0
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# A virtual environment in $VENV with the project installed in editable mode with every extra: the exporter's and
# the reporter's dependencies (the demo runs both; [all]) and what the tests need besides ([test]).
# It sees the system's site-packages, so numpy/scipy/pandas already installed are not downloaded again.
install_python_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages "$VENV" 2>/dev/null || {
      install_apt_packages python3-venv
      python3 -m venv --system-site-packages "$VENV"
    }
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[all,test]'
}
