{{/* Names and labels shared by every object of the chart. */}}

{{- define "kiln.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kiln.configMapName" -}}
{{- printf "%s-config" (include "kiln.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The directory of a file:// store: where its volume is mounted in every pod. */}}
{{- define "kiln.storePath" -}}
{{- trimPrefix "file://" .Values.objectStore.uri -}}
{{- end -}}

{{/*
The sections of the operator's configuration it applies live when the ConfigMap changes
(operator/src/config.ts applyConfigChange): toolchain, limits, defaults.
*/}}
{{- define "kiln.liveConfig" -}}
{{- $tc := .Values.toolchain -}}
{{- $builderTag := default $tc.version $tc.builderImage.tag -}}
{{- $runtimeTag := default $tc.version $tc.runtimeImage.tag -}}
{{- $defaults := dict "gpuResource" .Values.defaults.gpuResource -}}
{{- if .Values.defaults.gpuNodeSelectors -}}
{{- $_ := set $defaults "gpuNodeSelectors" .Values.defaults.gpuNodeSelectors -}}
{{- end -}}
{{- if .Values.defaults.builderResources -}}
{{- $_ := set $defaults "builderResources" .Values.defaults.builderResources -}}
{{- end -}}
{{- $config := dict
  "toolchain" (dict
    "version" $tc.version
    "builderImage" (printf "%s:%s" $tc.builderImage.repository $builderTag)
    "runtimeImage" (printf "%s:%s" $tc.runtimeImage.repository $runtimeTag))
  "limits" .Values.limits
  "defaults" $defaults -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
The sections the operator wires in at start (objectStore, leaderElection, http,
reconcileConcurrency): a change to them rolls the operator's pods through a checksum annotation.
*/}}
{{- define "kiln.startupConfig" -}}
{{- $store := dict "uri" .Values.objectStore.uri "region" .Values.objectStore.region -}}
{{- with .Values.objectStore.endpoint }}{{ $_ := set $store "endpoint" . }}{{ end -}}
{{- with .Values.objectStore.credentialsSecret }}{{ $_ := set $store "credentialsSecret" . }}{{ end -}}
{{- with .Values.objectStore.volume }}{{ $_ := set $store "volume" . }}{{ end -}}
{{- $lease := .Values.leaderElection -}}
{{- $config := dict
  "objectStore" $store
  "leaderElection" (dict
    "namespace" .Release.Namespace
    "name" $lease.name
    "leaseDurationSeconds" $lease.leaseDurationSeconds
    "renewDeadlineSeconds" $lease.renewDeadlineSeconds
    "retryPeriodSeconds" $lease.retryPeriodSeconds)
  "http" (dict "port" .Values.httpPort)
  "reconcileConcurrency" .Values.reconcileConcurrency -}}
{{- toYaml $config -}}
{{- end -}}
