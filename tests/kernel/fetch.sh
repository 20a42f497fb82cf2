#!/usr/bin/env bash
# Fetches the newest cloud kernel of a Debian release (bullseye, bookworm,
# trixie) and unpacks it under CACHE/<release>/. Uses a private apt state
# and sources list, so the machine's own apt configuration is never read
# or changed. Prints the unpacked tree's path. Idempotent: a kernel that is
# already unpacked is not fetched again.
#   usage: tests/kernel/fetch.sh RELEASE CACHE
set -euo pipefail
release=$1
cache=$2
dir=$cache/$release
if [[ -f $dir/ready ]]; then
    echo "$dir/root"
    exit 0
fi
mkdir -p "$dir/state/lists/partial" "$dir/cache/archives/partial" "$dir/etc/preferences.d" "$dir/etc/apt.conf.d"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f $keyring ]] || { echo "fetch: $keyring missing (apt-get install debian-archive-keyring)" >&2; exit 1; }
echo "deb [signed-by=$keyring] http://deb.debian.org/debian $release main" >"$dir/etc/sources.list"
# APT_CONFIG replaces /etc/apt/apt.conf and names an empty parts folder,
# so nothing of the machine's apt configuration applies.
cat >"$dir/apt.conf" <<CONF
Dir::State "$dir/state";
Dir::State::status "/dev/null";
Dir::Cache "$dir/cache";
Dir::Etc::SourceList "$dir/etc/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$dir/etc/preferences.d";
Dir::Etc::Parts "$dir/etc/apt.conf.d";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
CONF
export APT_CONFIG=$dir/apt.conf
apt_opts=(-q)
apt-get "${apt_opts[@]}" update >&2
# The cloud metapackage names the release's current kernel package.
pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[[ -n $pkg ]] || { echo "fetch: no cloud kernel found in $release" >&2; exit 1; }
rm -f "$dir"/*.deb
(cd "$dir" && apt-get "${apt_opts[@]}" download "$pkg" >&2)
rm -rf "$dir/root"
dpkg-deb -x "$dir"/*.deb "$dir/root"
rm -f "$dir"/*.deb
touch "$dir/ready"
echo "$dir/root"
