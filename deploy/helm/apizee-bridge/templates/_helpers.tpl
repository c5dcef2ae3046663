{{/*
The definitions every template shares: names, labels, the settings (one
dict, rendered as the ConfigMap and checksummed into the pod template), and
the pod: its container is used by the Deployment or StatefulSet, the
`check` init container and the spool drain Job alike, so that the three
never differ.
*/}}

{{- define "apizee-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "apizee-bridge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* What the Service, the PodDisruptionBudget, the NetworkPolicy and the
spread constraints select the bridge's pods by. The drain Job's pod has
none of them: it must never count as a replica. */}}
{{- define "apizee-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apizee-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "apizee-bridge.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "apizee-bridge.name" . }}
{{- end -}}

{{- define "apizee-bridge.labels" -}}
{{ include "apizee-bridge.selectorLabels" . }}
{{ include "apizee-bridge.commonLabels" . }}
{{- end -}}

{{- define "apizee-bridge.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Where the Secrets the bridge reads as files are mounted. */}}
{{- define "apizee-bridge.authDir" -}}/etc/apizee-bridge/auth{{- end -}}
{{- define "apizee-bridge.tlsDir" -}}/etc/apizee-bridge/tls{{- end -}}
{{- define "apizee-bridge.natsDir" -}}/etc/apizee-bridge/nats{{- end -}}
{{- define "apizee-bridge.natsTlsDir" -}}/etc/apizee-bridge/nats-tls{{- end -}}
{{- define "apizee-bridge.kafkaTlsDir" -}}/etc/apizee-bridge/kafka-tls{{- end -}}
{{- define "apizee-bridge.spoolDir" -}}/var/lib/apizee-bridge{{- end -}}

{{/* The settings the chart derives from its values, as the binary's
environment variables (one per flag, `apizee-bridge --help`). A key of
.Values.settings that is one of these is refused: it would be overridden
silently, or disagree with what is derived from it (the memory limit, the
grace period, the ports, the mounts). Secrets are never here: they come
from Secrets, as files or secretKeyRef. */}}
{{- define "apizee-bridge.derivedSettings" -}}
{{- $v := .Values -}}
{{- $s := dict
  "APIZEE_BRIDGE_SINK" $v.sink
  "APIZEE_BRIDGE_LISTEN" "0.0.0.0:8080"
  "APIZEE_BRIDGE_METRICS_LISTEN" "0.0.0.0:9090"
  "APIZEE_BRIDGE_MAX_IN_FLIGHT" (printf "%d" (int64 $v.bridge.maxInFlight))
  "APIZEE_BRIDGE_MAX_BODY_BYTES" (printf "%d" (int64 $v.bridge.maxBodyBytes))
  "APIZEE_BRIDGE_MAX_UNAUTHENTICATED_IN_FLIGHT" (printf "%d" (int64 $v.bridge.maxUnauthenticatedInFlight))
  "APIZEE_BRIDGE_DRAIN_DELAY" (printf "%ds" (int64 $v.bridge.drainDelaySeconds))
  "APIZEE_BRIDGE_SHUTDOWN_TIMEOUT" (printf "%ds" (int64 $v.bridge.shutdownTimeoutSeconds))
-}}
{{- if not (or $v.auth.tokenKey $v.auth.basicAuthKey $v.auth.hmacSecretKey) -}}
{{- fail "auth: tokenKey, basicAuthKey and hmacSecretKey are all empty, so webhooks would be taken from anyone: name at least one key of the Secret auth.existingSecret" -}}
{{- end -}}
{{- $auth := include "apizee-bridge.authDir" . -}}
{{- if $v.auth.tokenKey -}}
{{- $_ := set $s "APIZEE_BRIDGE_AUTH_HEADER" $v.auth.header -}}
{{- $_ := set $s "APIZEE_BRIDGE_AUTH_TOKEN_FILE" (printf "%s/%s" $auth $v.auth.tokenKey) -}}
{{- end -}}
{{- if $v.auth.basicAuthKey -}}
{{- $_ := set $s "APIZEE_BRIDGE_BASIC_AUTH_FILE" (printf "%s/%s" $auth $v.auth.basicAuthKey) -}}
{{- end -}}
{{- if $v.auth.hmacSecretKey -}}
{{- $_ := set $s "APIZEE_BRIDGE_HMAC_SECRET_FILE" (printf "%s/%s" $auth $v.auth.hmacSecretKey) -}}
{{- end -}}
{{- if $v.tls.existingSecret -}}
{{- $_ := set $s "APIZEE_BRIDGE_TLS_CERT" (printf "%s/tls.crt" (include "apizee-bridge.tlsDir" .)) -}}
{{- $_ := set $s "APIZEE_BRIDGE_TLS_KEY" (printf "%s/tls.key" (include "apizee-bridge.tlsDir" .)) -}}
{{- end -}}
{{- if $v.spool.enabled -}}
{{- $_ := set $s "APIZEE_BRIDGE_SPOOL_DIR" (printf "%s/spool" (include "apizee-bridge.spoolDir" .)) -}}
{{- $_ := set $s "APIZEE_BRIDGE_SPOOL_MAX_BYTES" (printf "%d" (int64 $v.spool.maxBytes)) -}}
{{- end -}}
{{- if eq $v.sink "nats" -}}
{{- $_ := set $s "APIZEE_BRIDGE_NATS_URL" $v.nats.url -}}
{{- if $v.nats.jetstream -}}
{{- $_ := set $s "APIZEE_BRIDGE_NATS_JETSTREAM" "true" -}}
{{- end -}}
{{- if $v.nats.stream -}}
{{- $_ := set $s "APIZEE_BRIDGE_NATS_STREAM" $v.nats.stream -}}
{{- end -}}
{{- if and $v.nats.existingSecret $v.nats.credsKey -}}
{{- $_ := set $s "APIZEE_BRIDGE_NATS_CREDS_FILE" (printf "%s/%s" (include "apizee-bridge.natsDir" .) $v.nats.credsKey) -}}
{{- end -}}
{{- with $v.nats.tls -}}
{{- if .existingSecret -}}
{{- $dir := include "apizee-bridge.natsTlsDir" $ -}}
{{- if .caKey -}}
{{- $_ := set $s "APIZEE_BRIDGE_NATS_CA_FILE" (printf "%s/%s" $dir .caKey) -}}
{{- end -}}
{{- if .certKey -}}
{{- $_ := set $s "APIZEE_BRIDGE_NATS_CLIENT_CERT" (printf "%s/%s" $dir .certKey) -}}
{{- $_ := set $s "APIZEE_BRIDGE_NATS_CLIENT_KEY" (printf "%s/%s" $dir .keyKey) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- else if eq $v.sink "kafka" -}}
{{- $_ := set $s "APIZEE_BRIDGE_KAFKA_BROKERS" $v.kafka.brokers -}}
{{- if $v.kafka.createTopics -}}
{{- $_ := set $s "APIZEE_BRIDGE_KAFKA_CREATE_TOPICS" "true" -}}
{{- $_ := set $s "APIZEE_BRIDGE_KAFKA_PARTITIONS" (printf "%d" (int64 $v.kafka.partitions)) -}}
{{- $_ := set $s "APIZEE_BRIDGE_KAFKA_REPLICATION_FACTOR" (printf "%d" (int64 $v.kafka.replicationFactor)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $s -}}
{{- end -}}

{{/* The whole ConfigMap data: the derived settings, then .Values.settings,
none of which may be one of them. */}}
{{- define "apizee-bridge.settings" -}}
{{- $derived := include "apizee-bridge.derivedSettings" . | fromYaml -}}
{{- $all := deepCopy $derived -}}
{{- range $name, $value := .Values.settings -}}
{{- if hasKey $derived $name -}}
{{- fail (printf "settings.%s: the chart sets %s itself, from its values (sink, nats, kafka, auth, tls, spool, bridge): set it there instead" $name $name) -}}
{{- end -}}
{{- if or (kindIs "map" $value) (kindIs "slice" $value) -}}
{{- fail (printf "settings.%s: a setting is a string, a number or a boolean, not %s" $name (kindOf $value)) -}}
{{- end -}}
{{- $_ := set $all $name (ternary (printf "%d" (int64 $value)) (toString $value) (kindIs "float64" $value)) -}}
{{- end -}}
{{- toYaml $all -}}
{{- end -}}

{{/* librdkafka properties from the values (ssl.* locations of the TLS
Secret's files included), ';'-separated, as --kafka-option reads them. */}}
{{- define "apizee-bridge.kafkaOptions" -}}
{{- $options := list -}}
{{- range $key, $value := .Values.kafka.options -}}
{{- $options = append $options (printf "%s=%v" $key $value) -}}
{{- end -}}
{{- with .Values.kafka.tls -}}
{{- if .existingSecret -}}
{{- $dir := include "apizee-bridge.kafkaTlsDir" $ -}}
{{- if .caKey -}}
{{- $options = append $options (printf "ssl.ca.location=%s/%s" $dir .caKey) -}}
{{- end -}}
{{- if .certKey -}}
{{- $options = append $options (printf "ssl.certificate.location=%s/%s" $dir .certKey) -}}
{{- $options = append $options (printf "ssl.key.location=%s/%s" $dir .keyKey) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.kafka.existingSecret .Values.kafka.secretOptionsKey -}}
{{- $options = append $options "$(KAFKA_SECRET_OPTIONS)" -}}
{{- end -}}
{{- join ";" $options -}}
{{- end -}}

{{/* The memory limit: the resources.limits.memory value, or every body the
settings let in held twice (by the request and by the broker client until
the ack: benches/inflight-memory.sh), plus the bodies read before an HMAC
check, 128 queued dead letters, the process itself (64 MiB, librdkafka's
queues included) and, with the spool, its own 44 MiB (redb's cache,
spool::CACHE_BYTES; the objectId table, spool::KEY_TABLE_BYTES; the
replay's bodies, delivery::REPLAY_MEMORY_BYTES), plus 16 MiB, rounded up to
32 MiB. tests/deploy/kubernetes.rs redoes this sum from the binary's own
settings and constants. */}}
{{- define "apizee-bridge.memoryLimit" -}}
{{- if .Values.resources.limits.memory -}}
{{- .Values.resources.limits.memory -}}
{{- else -}}
{{- $b := .Values.bridge -}}
{{- $mib := 1048576 -}}
{{- $bodies := add (mul 2 (int64 $b.maxInFlight)) (int64 $b.maxUnauthenticatedInFlight) 128 -}}
{{- $bytes := add (mul $bodies (int64 $b.maxBodyBytes)) (mul 64 $mib) (mul 16 $mib) -}}
{{- if .Values.spool.enabled -}}
{{- $bytes = add $bytes (mul 44 $mib) -}}
{{- end -}}
{{- $step := mul 32 $mib -}}
{{- printf "%dMi" (mul (div (add $bytes (sub $step 1)) $step) 32) -}}
{{- end -}}
{{- end -}}

{{/* The bridge's resources, which the drain Job shares: a drain holds a
window of publishes and redb's page cache, as the bridge's replay does. */}}
{{- define "apizee-bridge.resources" -}}
requests:
  {{- toYaml .Values.resources.requests | nindent 2 }}
limits:
  cpu: {{ .Values.resources.limits.cpu | quote }}
  memory: {{ include "apizee-bridge.memoryLimit" . }}
{{- end -}}

{{/* terminationGracePeriodSeconds: the drain delay, the shutdown timeout,
the rest of the shutdown (5 s, SHUTDOWN_AFTER_DRAIN in src/lib.rs) and a
5 s margin; the kubelet sends SIGKILL this long after SIGTERM. */}}
{{- define "apizee-bridge.gracePeriod" -}}
{{- add (int64 .Values.bridge.drainDelaySeconds) (int64 .Values.bridge.shutdownTimeoutSeconds) 10 -}}
{{- end -}}

{{/* The container's environment besides the ConfigMap: secrets by
secretKeyRef, for what the bridge reads once at start-up (broker
credentials; a change to them restarts nothing: roll the pods). */}}
{{- define "apizee-bridge.env" -}}
{{- $v := .Values -}}
{{- if eq $v.sink "nats" -}}
{{- with $v.nats -}}
{{- if .existingSecret -}}
{{- range $key, $var := dict "tokenKey" "APIZEE_BRIDGE_NATS_TOKEN" "userKey" "APIZEE_BRIDGE_NATS_USER" "passwordKey" "APIZEE_BRIDGE_NATS_PASSWORD" "nkeySeedKey" "APIZEE_BRIDGE_NATS_NKEY_SEED" -}}
{{- with index $v.nats $key }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.nats.existingSecret }}
      key: {{ . }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- else if eq $v.sink "kafka" -}}
{{- if and $v.kafka.existingSecret $v.kafka.secretOptionsKey }}
# Referred to as $(KAFKA_SECRET_OPTIONS) below, so that the properties of
# the Secret and of the values are one --kafka-option list.
- name: KAFKA_SECRET_OPTIONS
  valueFrom:
    secretKeyRef:
      name: {{ $v.kafka.existingSecret }}
      key: {{ $v.kafka.secretOptionsKey }}
{{- end -}}
{{- with include "apizee-bridge.kafkaOptions" . }}
- name: APIZEE_BRIDGE_KAFKA_OPTION
  value: {{ . | quote }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secrets mounted as files: name, Secret, keys, directory. */}}
{{- define "apizee-bridge.secretFiles" -}}
{{- $v := .Values -}}
{{- $files := list -}}
{{- $authKeys := list -}}
{{- range (list $v.auth.tokenKey $v.auth.basicAuthKey $v.auth.hmacSecretKey) -}}
{{- if . -}}{{- $authKeys = append $authKeys . -}}{{- end -}}
{{- end -}}
{{- if $authKeys -}}
{{- $files = append $files (dict "name" "auth" "secret" $v.auth.existingSecret "keys" $authKeys "dir" (include "apizee-bridge.authDir" .)) -}}
{{- end -}}
{{- if $v.tls.existingSecret -}}
{{- $files = append $files (dict "name" "tls" "secret" $v.tls.existingSecret "keys" (list "tls.crt" "tls.key") "dir" (include "apizee-bridge.tlsDir" .)) -}}
{{- end -}}
{{- if eq $v.sink "nats" -}}
{{- if and $v.nats.existingSecret $v.nats.credsKey -}}
{{- $files = append $files (dict "name" "nats-creds" "secret" $v.nats.existingSecret "keys" (list $v.nats.credsKey) "dir" (include "apizee-bridge.natsDir" .)) -}}
{{- end -}}
{{- with $v.nats.tls -}}
{{- if .existingSecret -}}
{{- $keys := compact (list .caKey .certKey .keyKey) -}}
{{- $files = append $files (dict "name" "nats-tls" "secret" .existingSecret "keys" $keys "dir" (include "apizee-bridge.natsTlsDir" $)) -}}
{{- end -}}
{{- end -}}
{{- else if eq $v.sink "kafka" -}}
{{- with $v.kafka.tls -}}
{{- if .existingSecret -}}
{{- $keys := compact (list .caKey .certKey .keyKey) -}}
{{- $files = append $files (dict "name" "kafka-tls" "secret" .existingSecret "keys" $keys "dir" (include "apizee-bridge.kafkaTlsDir" $)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "files" $files) -}}
{{- end -}}

{{/* The volumes of the Secrets' files. No subPath: a Secret's update
reaches a directory mount (the kubelet swaps a symlink), never a subPath
one, and the bridge reloads auth and TLS files from it. */}}
{{- define "apizee-bridge.secretVolumes" -}}
{{- range (include "apizee-bridge.secretFiles" . | fromYaml).files }}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    # 0440: readable by the pod's group (fsGroup), not by others.
    defaultMode: 288
    items:
      {{- range .keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end -}}
{{- end -}}

{{- define "apizee-bridge.volumeMounts" -}}
{{- if .Values.spool.enabled }}
- name: spool
  mountPath: {{ include "apizee-bridge.spoolDir" . }}
{{- end -}}
{{- range (include "apizee-bridge.secretFiles" . | fromYaml).files }}
- name: {{ .name }}
  mountPath: {{ .dir }}
  readOnly: true
{{- end -}}
{{- end -}}

{{/* What the bridge's container, the check init container and the drain
Job's container share: image, settings, secrets, mounts, hardening. */}}
{{- define "apizee-bridge.containerBase" -}}
image: {{ include "apizee-bridge.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
envFrom:
  - configMapRef:
      name: {{ include "apizee-bridge.fullname" . }}
{{- with include "apizee-bridge.env" . | trim }}
env:
{{- . | nindent 2 }}
{{- end }}
{{- with include "apizee-bridge.volumeMounts" . | trim }}
volumeMounts:
{{- . | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  allowPrivilegeEscalation: false
  # Nothing is written but the spool, on its own volume.
  readOnlyRootFilesystem: true
  capabilities:
    drop:
      - ALL
terminationMessagePolicy: FallbackToLogsOnError
{{- end -}}

{{/* The pod's securityContext: 65532 is "nonroot" in distroless images;
the bridge needs no user of its own and binds ports above 1024. fsGroup
makes the spool's volume and the Secrets' files readable by it. */}}
{{- define "apizee-bridge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
# Chown a new volume once, not at every start.
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "apizee-bridge.podCommon" -}}
# The bridge never talks to the Kubernetes API.
automountServiceAccountToken: false
# No <SERVICE>_PORT variables: for a Service named apizee-bridge they would
# be APIZEE_BRIDGE_*, the prefix of the bridge's own settings.
enableServiceLinks: false
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
{{- include "apizee-bridge.podSecurityContext" . | nindent 2 }}
{{- end -}}
