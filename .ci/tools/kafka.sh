#!/usr/bin/env bash
# Installs the Apache Kafka brokers the tests and benches/load.sh run, without
# root: each release named in .ci/tools/kafka/releases has its jars copied
# from Maven Central (mvn dependency:copy-dependencies, .ci/tools/kafka/pom.xml)
# into target/tools/kafka/VERSION/libs, beside the build (`cargo clean`
# removes it). Skipped when that folder is complete. Run them with
# .ci/tools/kafka/node.sh.
#
#   bash .ci/tools/kafka.sh            installs every release, prints nothing
#   bash .ci/tools/kafka.sh current    installs that one, prints its libs folder
#
# Needs Maven and a JDK (Debian: apt-get install maven openjdk-17-jdk-headless).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/.ci/tools/kafka
say() { echo "kafka.sh: $*" >&2; }

install() {
    local version=$1 log4j2=$2
    local libs=$ROOT/target/tools/kafka/$version/libs
    # Written last: a folder without it is from an interrupted copy.
    local done=$libs/.installed
    if [[ ! -f $done ]]; then
        command -v mvn >/dev/null || { say "mvn not found (as root: apt-get install maven)"; exit 1; }
        say "installing Apache Kafka $version with log4j2 $log4j2 (Maven Central) into $libs"
        rm -rf "$libs"
        mvn -B -q -Dstyle.color=never -f "$HERE/pom.xml" -Dkafka.version="$version" -Dlog4j2.version="$log4j2" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" >&2 ||
            { say "mvn could not fetch Kafka $version; is Maven Central reachable?"; exit 1; }
        [[ -f $libs/kafka_2.13-$version.jar && -f $libs/log4j-slf4j-impl-$log4j2.jar ]] ||
            { say "$libs lacks kafka_2.13-$version.jar or the log4j2 binding"; exit 1; }
        touch "$done"
    fi
    echo "$libs"
}

wanted=${1:-}
found=
while read -r name version log4j2; do
    [[ -z $name || $name == \#* ]] && continue
    if [[ -z $wanted ]]; then
        install "$version" "$log4j2" >/dev/null
    elif [[ $wanted == "$name" || $wanted == "$version" ]]; then
        install "$version" "$log4j2"
        found=1
    fi
done <"$HERE/releases"
[[ -z $wanted || -n $found ]] || { say "no release $wanted in $HERE/releases"; exit 2; }
