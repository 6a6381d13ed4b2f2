{{/*
Names, labels and identities shared by the templates.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "kvmotion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object's name. Release "kvmotion" gives "kvmotion", so
the objects are kvmotion-controller and kvmotion-agent, the names the agent
and the plain manifests in config/ expect by default. Cut at 40 characters so
that the longest name, <fullname>-controller-metrics (a Service, at most 63),
still fits.
*/}}
{{- define "kvmotion.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kvmotion.controller.fullname" -}}
{{- printf "%s-controller" (include "kvmotion.fullname" .) -}}
{{- end -}}

{{- define "kvmotion.agent.fullname" -}}
{{- printf "%s-agent" (include "kvmotion.fullname" .) -}}
{{- end -}}

{{- define "kvmotion.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "kvmotion.labels" -}}
helm.sh/chart: {{ include "kvmotion.chart" . }}
app.kubernetes.io/name: {{ include "kvmotion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvmotion
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels of one component ("controller" or "agent"). They never change
between releases of the chart: a Deployment's selector is immutable.
*/}}
{{- define "kvmotion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvmotion.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's objects: the common ones and its selector. */}}
{{- define "kvmotion.componentLabels" -}}
{{ include "kvmotion.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kvmotion.controller.serviceAccountName" -}}
{{- default (include "kvmotion.controller.fullname" .) .Values.controller.serviceAccount.name -}}
{{- end -}}

{{- define "kvmotion.agent.serviceAccountName" -}}
{{- default (include "kvmotion.agent.fullname" .) .Values.agent.serviceAccount.name -}}
{{- end -}}

{{/* The username a service account's tokens authenticate as. */}}
{{- define "kvmotion.controller.identity" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "kvmotion.controller.serviceAccountName" .) -}}
{{- end -}}

{{- define "kvmotion.agent.identity" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "kvmotion.agent.serviceAccountName" .) -}}
{{- end -}}

{{/* repository:tag of an image value, the tag defaulting to appVersion. */}}
{{- define "kvmotion.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}

{{/* The TLS Secret's name; fails the render when TLS is on without one. */}}
{{- define "kvmotion.tlsSecretName" -}}
{{- required "tls.secretName is required when tls.enabled is true: a Secret with tls.crt, tls.key and ca.crt" .Values.tls.secretName -}}
{{- end -}}

{{/* Where the projected agent-audience token is mounted, in both pods. */}}
{{- define "kvmotion.agentTokenDir" -}}
/var/run/secrets/kvmotion.io/agent-token
{{- end -}}

{{- define "kvmotion.tlsDir" -}}
/var/run/secrets/kvmotion.io/tls
{{- end -}}

{{/* The projected token volume: a short-lived token for the agents' audience. */}}
{{- define "kvmotion.agentTokenVolume" -}}
- name: agent-token
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ .Values.agentAuth.audience | quote }}
          expirationSeconds: {{ .Values.agentAuth.expirationSeconds }}
          path: token
{{- end -}}
