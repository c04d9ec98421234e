{{/*
Names, labels, and the values the templates compute: memory from max_memory, the grace
period from the timeouts, and the checks that stop a bad combination of values with a clear
message (values.schema.json checks each value alone).
*/}}

{{- define "ringcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The StatefulSet, the headless Service and the pods' prefix. Pod names add "-N", and the
seeds' DNS names are <fullname>-N.<fullname>.<namespace>.svc.<domain>: keep it short. */}}
{{- define "ringcache.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ringcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ringcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cache
{{- end -}}

{{/* Labels of every object but the client Service (whose component is "client", so the
ServiceMonitor selects only the headless Service). */}}
{{- define "ringcache.labels" -}}
{{ include "ringcache.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* A size as ringcached reads it ("1GiB", "512MiB", "64MB") in bytes. */}}
{{- define "ringcache.bytes" -}}
{{- $text := . | toString | trim -}}
{{- $number := regexFind "^[0-9]+" $text -}}
{{- $unit := $text | trimPrefix $number | trim -}}
{{- $scale := dict "" 1 "B" 1 "KiB" 1024 "MiB" 1048576 "GiB" 1073741824 "TiB" 1099511627776 "KB" 1000 "kB" 1000 "MB" 1000000 "GB" 1000000000 "TB" 1000000000000 -}}
{{- if or (not $number) (not (hasKey $scale $unit)) -}}
{{- fail (printf "%q is not a size (a number and B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)" $text) -}}
{{- end -}}
{{- mul (atoi $number | int64) (int64 (get $scale $unit)) -}}
{{- end -}}

{{/* A Kubernetes memory quantity with a binary suffix ("1460Mi") in bytes. */}}
{{- define "ringcache.quantityBytes" -}}
{{- $text := . | toString | trim -}}
{{- $number := regexFind "^[0-9]+" $text -}}
{{- $unit := $text | trimPrefix $number -}}
{{- $scale := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- mul (atoi $number | int64) (int64 (get $scale $unit)) -}}
{{- end -}}

{{/* Memory a node may use: max_memory x 1.3 + 128Mi, rounded up to a MiB. */}}
{{- define "ringcache.minimumMemory" -}}
{{- $bytes := include "ringcache.bytes" .Values.maxMemory | int64 -}}
{{- $want := add (div (mul $bytes 13) 10) 134217728 -}}
{{- printf "%dMi" (div (add $want 1048575) 1048576) -}}
{{- end -}}

{{/* The container's memory request and limit. */}}
{{- define "ringcache.memory" -}}
{{- $minimum := include "ringcache.minimumMemory" . -}}
{{- with .Values.resources.memory -}}
{{- if lt (include "ringcache.quantityBytes" . | int64) (include "ringcache.quantityBytes" $minimum | int64) -}}
{{- fail (printf "resources.memory %s is below max_memory x 1.3 + 128Mi = %s for maxMemory %s: the node would be OOM-killed before it evicts" . $minimum $.Values.maxMemory) -}}
{{- end -}}
{{- . -}}
{{- else -}}
{{- $minimum -}}
{{- end -}}
{{- end -}}

{{/* A duration ("500ms", "10s", "5m", "1h") in whole seconds, rounded up. */}}
{{- define "ringcache.seconds" -}}
{{- $text := . | toString -}}
{{- $number := regexFind "^[0-9]+" $text | atoi | int64 -}}
{{- $unit := $text | trimPrefix (regexFind "^[0-9]+" $text) -}}
{{- if eq $unit "ms" -}}{{- div (add $number 999) 1000 -}}
{{- else if eq $unit "s" -}}{{- $number -}}
{{- else if eq $unit "m" -}}{{- mul $number 60 -}}
{{- else if eq $unit "h" -}}{{- mul $number 3600 -}}
{{- else -}}{{- fail (printf "%q is not a duration (a number with ms, s, m or h)" $text) -}}
{{- end -}}
{{- end -}}

{{/* What SIGTERM does: shutdownMode, or restart with persistence and handoff without. */}}
{{- define "ringcache.shutdownMode" -}}
{{- if .Values.shutdownMode -}}
{{- .Values.shutdownMode -}}
{{- else if .Values.persistence.enabled -}}
restart
{{- else -}}
handoff
{{- end -}}
{{- end -}}

{{/* The data volume's size: persistence.size, or 2 x max_memory + 10% rounded up to a Gi (a
snapshot holds at most max_memory; a new one is written beside the previous one). */}}
{{- define "ringcache.dataSize" -}}
{{- with .Values.persistence.size -}}
{{- . -}}
{{- else -}}
{{- $bytes := include "ringcache.bytes" .Values.maxMemory | int64 -}}
{{- printf "%dGi" (div (add (div (mul $bytes 22) 10) 1073741823) 1073741824) -}}
{{- end -}}
{{- end -}}

{{/* Seconds the stop's snapshot may take with persistence: max_memory at 300MB/s (a network
disk's or a slow SSD's write speed), rounded up; 0 without persistence. */}}
{{- define "ringcache.snapshotSeconds" -}}
{{- if .Values.persistence.enabled -}}
{{- div (add (include "ringcache.bytes" .Values.maxMemory | int64) 299999999) 300000000 -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/* What a graceful stop may take: in-flight requests, the snapshot, the hand-off (with
handoff, or when no snapshot could be written), the gossip leave (5s). */}}
{{- define "ringcache.gracefulStop" -}}
{{- add (include "ringcache.seconds" .Values.shutdownTimeout | int64) (include "ringcache.snapshotSeconds" . | int64) (include "ringcache.seconds" .Values.leaveTimeout | int64) 5 -}}
{{- end -}}

{{- define "ringcache.terminationGracePeriod" -}}
{{- $stop := include "ringcache.gracefulStop" . | int64 -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $stop 15 -}}
{{- else -}}
{{- $set := .Values.terminationGracePeriodSeconds | int64 -}}
{{- if lt $set $stop -}}
{{- if .Values.persistence.enabled -}}
{{- fail (printf "terminationGracePeriodSeconds %d is shorter than a graceful stop (shutdownTimeout + the snapshot, maxMemory at 300MB/s (%ss) + leaveTimeout + 5s = %ds): the kubelet would kill the snapshot or the hand-off" $set (include "ringcache.snapshotSeconds" .) $stop) -}}
{{- else -}}
{{- fail (printf "terminationGracePeriodSeconds %d is shorter than a graceful stop (shutdownTimeout + leaveTimeout + 5s = %ds): the kubelet would kill the hand-off" $set $stop) -}}
{{- end -}}
{{- end -}}
{{- $set -}}
{{- end -}}
{{- end -}}

{{/* The seeds: the gossip addresses of pods 0 and 1, by the headless Service's names. */}}
{{- define "ringcache.seeds" -}}
{{- $name := include "ringcache.fullname" . -}}
{{- $domain := .Values.clusterDomain -}}
{{- printf "%s-0.%s.$(POD_NAMESPACE).svc.%s:7380,%s-1.%s.$(POD_NAMESPACE).svc.%s:7380" $name $name $domain $name $name $domain -}}
{{- end -}}

{{/* Settings the chart sets itself, refused in .Values.config. */}}
{{- define "ringcache.reservedKeys" -}}
config node_id bind advertise_addr seeds grpc_port gossip_port http_port cluster_port resp_port workers insecure tls_cert tls_key tls_client_ca cluster_ca cluster_cert cluster_key cluster_server_name users_file gossip_keyring max_memory eviction_policy replication_factor vnodes write_consistency read_consistency min_cluster_size shutdown_timeout leave_timeout rebalance_rate log_format dev_cluster data_dir shutdown_mode restart_grace snapshot_interval snapshot_rate snapshot_max_age
{{- end -}}

{{/* Checks across values; each failure names the values and what to change. */}}
{{- define "ringcache.validate" -}}
{{- $v := .Values -}}
{{- if not $v.security.insecure -}}
{{- $missing := list -}}
{{- if not $v.security.tls.secretName -}}{{- $missing = append $missing "security.tls.secretName (TLS on the client port)" -}}{{- end -}}
{{- if not $v.security.usersSecret -}}{{- $missing = append $missing "security.usersSecret (users)" -}}{{- end -}}
{{- if not $v.security.clusterTls.secretName -}}{{- $missing = append $missing "security.clusterTls.secretName (cluster TLS)" -}}{{- end -}}
{{- if not $v.security.gossipKeyringSecret -}}{{- $missing = append $missing "security.gossipKeyringSecret (a gossip key ring)" -}}{{- end -}}
{{- if $missing -}}
{{- fail (printf "security.insecure is false, so the nodes need every protection, and these are missing: %s. Give them (SECURITY.md), or set security.insecure=true on a trusted pod network" (join ", " $missing)) -}}
{{- end -}}
{{- end -}}
{{- if and $v.security.tls.requireClientCerts (not $v.security.tls.secretName) -}}
{{- fail "security.tls.requireClientCerts needs security.tls.secretName (its ca.crt signs the client certificates)" -}}
{{- end -}}
{{- if and (eq $v.probes.readiness.type "grpc") $v.security.tls.secretName -}}
{{- fail "probes.readiness.type grpc cannot be used with security.tls: the kubelet's gRPC probe does not speak TLS; use type http (the same answer, on the HTTP port)" -}}
{{- end -}}
{{- if gt (int $v.minClusterSize) (int $v.replicas) -}}
{{- fail (printf "minClusterSize %d is more than replicas %d: no write would ever be accepted" (int $v.minClusterSize) (int $v.replicas)) -}}
{{- end -}}
{{- if gt (int $v.replicationFactor) (int $v.replicas) -}}
{{- fail (printf "replicationFactor %d is more than replicas %d: keys could never have that many copies" (int $v.replicationFactor) (int $v.replicas)) -}}
{{- end -}}
{{- $reserved := splitList " " (include "ringcache.reservedKeys" .) -}}
{{- range $key, $value := $v.config -}}
{{- if has $key $reserved -}}
{{- fail (printf "config.%s is set by the chart itself; use its value instead (values.yaml)" $key) -}}
{{- end -}}
{{- if kindIs "map" $value -}}
{{- fail (printf "config.%s: a setting is a string, number, boolean or list, not a map" $key) -}}
{{- end -}}
{{- end -}}
{{- if not $v.persistence.enabled -}}
{{- if eq $v.shutdownMode "restart" -}}
{{- fail "shutdownMode restart needs persistence.enabled: the pod keeps its data in a snapshot on its volume; use handoff (or \"\") without persistence" -}}
{{- end -}}
{{- if $v.snapshotInterval -}}
{{- fail "snapshotInterval needs persistence.enabled: the snapshots go to the pod's volume" -}}
{{- end -}}
{{- else if $v.persistence.size -}}
{{- $want := mul (include "ringcache.bytes" $v.maxMemory | int64) 2 -}}
{{- if lt (include "ringcache.quantityBytes" $v.persistence.size | int64) $want -}}
{{- fail (printf "persistence.size %s is below 2 x maxMemory (%s): a new snapshot (up to maxMemory) is written beside the previous one before it replaces it" $v.persistence.size $v.maxMemory) -}}
{{- end -}}
{{- end -}}
{{- $_ := include "ringcache.memory" . -}}
{{- $_ := include "ringcache.terminationGracePeriod" . -}}
{{- end -}}
