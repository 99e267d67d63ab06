{{/* The prefix of every object's name: the release name when it contains the chart's name,
else RELEASE-spiderpool; `spiderpool` for the release `spiderpool`. */}}
{{- define "spiderpool.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "spiderpool.agent" -}}{{ include "spiderpool.fullname" . }}-agent{{- end -}}
{{- define "spiderpool.controller" -}}{{ include "spiderpool.fullname" . }}-controller{{- end -}}

{{/* The ValidatingWebhookConfiguration the controller registers (and alone may write). */}}
{{- define "spiderpool.webhookConfiguration" -}}{{ include "spiderpool.fullname" . }}{{- end -}}

{{- define "spiderpool.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The labels selecting a component's pods; call with (list $ "agent"). */}}
{{- define "spiderpool.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every object's labels; call with (list $ "agent"). */}}
{{- define "spiderpool.labels" -}}
{{- $root := index . 0 -}}
{{ include "spiderpool.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Values.image.tag | default $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end -}}

{{/* The agent socket, checked: an absolute path to a file in a directory other than /. */}}
{{- define "spiderpool.agentSocket" -}}
{{- $socket := required "agentSocket is required" .Values.agentSocket -}}
{{- if or (not (isAbs $socket)) (eq (dir $socket) "/") (hasSuffix "/" $socket) -}}
{{- fail (printf "agentSocket %q: need an absolute path of a file in a directory other than /, like /run/spiderpool/agent.sock" $socket) -}}
{{- end -}}
{{- $socket -}}
{{- end -}}
