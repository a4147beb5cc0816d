{{/* Chart name, overridable. */}}
{{- define "interceptor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart unless the release already names the chart. */}}
{{- define "interceptor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "interceptor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels selecting the daemon pods (stable across upgrades). */}}
{{- define "interceptor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "interceptor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "interceptor.labels" -}}
helm.sh/chart: {{ include "interceptor.chart" . }}
{{ include "interceptor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: node-daemon
{{- end }}

{{- define "interceptor.serviceAccountName" -}}
{{- default (include "interceptor.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* Paths inside the container. */}}
{{- define "interceptor.cgroupMount" -}}/host/sys/fs/cgroup{{- end }}
{{- define "interceptor.bpffsMount" -}}/host/sys/fs/bpf{{- end }}
{{- define "interceptor.auditMount" -}}/var/lib/interceptor/audit{{- end }}
{{- define "interceptor.configDir" -}}/etc/interceptor{{- end }}
{{/*
The admin unix socket (`policy apply/history`, `approvals`, `status`): in the
node-state mount, at the path those commands use by default, so that
`kubectl exec ds/<name> -- interceptor policy history` needs no flags.
*/}}
{{- define "interceptor.adminSocket" -}}/run/interceptor/admin.sock{{- end }}

{{/*
Capabilities the daemon container gets (everything else is dropped):
  BPF        load the programs, create and pin maps and links (kernel 5.8+;
             before that only CAP_SYS_ADMIN could, and 5.10 is the minimum)
  PERFMON    without it the verifier applies its Spectre v1 restrictions to
             the loader and rejects the programs ("pointer arithmetic ...
             prohibited for !root")
  NET_ADMIN  cgroup sock_addr and sock_ops programs are networking program
             types: loading and attaching them, querying what is attached
             (/readyz), and SO_MARK on the daemon's upstream sockets need it
  DAC_READ_SEARCH  only with kubeletPodsDir: read pods' projected tokens,
             which belong to the pod's user with mode 0600/0640
Not needed: SYS_ADMIN (CAP_BPF covers it on 5.8+), NET_RAW (no raw
sockets), NET_BIND_SERVICE (ports are >= 1024), SYS_PTRACE, hostPID.
interceptor-daemon/tests/chart_privileges.rs runs the daemon with exactly
BPF, PERFMON and NET_ADMIN, and shows each of them is needed.
*/}}
{{- define "interceptor.capabilities" -}}
{{- $caps := list "BPF" "PERFMON" "NET_ADMIN" }}
{{- if .Values.kubeletPodsDir.enabled }}
{{- $caps = append $caps "DAC_READ_SEARCH" }}
{{- end }}
{{- range .Values.securityContext.extraCapabilities }}
{{- $caps = append $caps . }}
{{- end }}
{{- toYaml ($caps | uniq) }}
{{- end }}

{{/*
Non-empty when SIGTERM asks the API server whether a rollout is under way
(redirect.handover): fail-closed mode only.
*/}}
{{- define "interceptor.handover" -}}
{{- if and (eq (toString .Values.failMode) "closed") .Values.redirect.handover }}true{{ end }}
{{- end }}

{{/*
The daemon's config.yaml. ${NODE_NAME} and ${NODE_IP} are expanded by the
daemon from the environment the downward API fills in, so one ConfigMap
serves every node.
*/}}
{{- define "interceptor.config" -}}
{{- $listener := dict "address" (default (printf "${NODE_IP}:%v" .Values.listener.port) .Values.listener.address) }}
{{- with .Values.listener.addressV6 }}
{{- $_ := set $listener "address_v6" . }}
{{- end }}
{{- $redirect := dict
    "cgroup_root" (include "interceptor.cgroupMount" .)
    "pin_dir" (printf "%s/%s" (include "interceptor.bpffsMount" .) .Values.hostPaths.pinSubdir)
    "select_cgroups" .Values.redirect.selectCgroups
    "fail_mode" .Values.failMode
    "socket_mark" (int .Values.redirect.socketMark)
    "rescan_interval_ms" (int .Values.redirect.rescanIntervalMs) }}
{{- if not (kindIs "invalid" .Values.redirect.skipUid) }}
{{- $_ := set $redirect "skip_uid" (int .Values.redirect.skipUid) }}
{{- end }}
{{- if include "interceptor.handover" . }}
{{- $_ := set $redirect "handover" (dict "daemonset" (include "interceptor.fullname" .) "namespace" .Release.Namespace) }}
{{- end }}
{{- $cfg := dict
    "node_name" "${NODE_NAME}"
    "listener" $listener
    "admin" (dict
        "address" (printf "${NODE_IP}:%v" .Values.admin.port)
        "socket" (include "interceptor.adminSocket" .))
    "redirect" $redirect
    "identity" .Values.identity
    "targets" .Values.targets
    "policy" .Values.policy }}
{{- with .Values.proxy }}
{{- $_ := set $cfg "proxy" . }}
{{- end }}
{{- if .Values.audit.enabled }}
{{- $audit := dict
    "dir" (include "interceptor.auditMount" .)
    "checkpoint_every" (int64 .Values.audit.checkpointEvery)
    "segment_bytes" (int64 .Values.audit.segmentBytes)
    "record_responses" (.Values.audit.recordResponses | default false)
    "record_rows" (int64 (.Values.audit.recordRows | default 0)) }}
{{- $retention := dict }}
{{- with .Values.audit.retention }}
{{- with .maxAge }}{{- $_ := set $retention "max_age" . }}{{- end }}
{{- with .maxBytes }}{{- $_ := set $retention "max_bytes" (int64 .) }}{{- end }}
{{- end }}
{{- if $retention }}
{{- $_ := set $audit "retention" $retention }}
{{- end }}
{{- $_ := set $cfg "audit" $audit }}
{{- end }}
{{- toYaml (mergeOverwrite (deepCopy .Values.extraConfig) $cfg) }}
{{- end }}
