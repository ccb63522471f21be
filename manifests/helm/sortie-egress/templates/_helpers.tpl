{{/*
Names are fixed, as in the kustomize manifests: the controller, the webhook and the admission
policies refer to one another by these names, and the product is installed once per cluster.
*/}}

{{/* Helm's standard labels plus the product's part-of label (the kustomize base's common label). */}}
{{- define "sortie-egress.labels" -}}
app.kubernetes.io/part-of: sortie-egress
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* With Helm's managed-by: every object but those whose managed-by the product owns (the
webhook configuration and the admission policies keep sortie-egress, next to the labels above). */}}
{{- define "sortie-egress.helmLabels" -}}
{{ include "sortie-egress.labels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sortie-egress.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}:{{ $tag }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{- define "sortie-egress.tlsSecret" -}}
{{- if eq .Values.certificates.mode "existingSecret" -}}
{{ .Values.certificates.existingSecret.name }}
{{- else -}}
sortie-egress-tls
{{- end -}}
{{- end }}

{{/* The controller's --dns value (sortie_egress/render/networkpolicy.py DnsDestination). */}}
{{- define "sortie-egress.dns" -}}
{{- $dns := .Values.dns -}}
{{- if eq $dns.destination "any" -}}
{{- if $dns.nodeLocal }}{{ fail "dns.nodeLocal is only used with dns.destination=cluster: with any, port 53 is open everywhere already" }}{{ end -}}
any
{{- else if eq $dns.destination "cidrs" -}}
{{- if not $dns.cidrs }}{{ fail "dns.destination=cidrs needs dns.cidrs: the networks session pods may send DNS queries to" }}{{ end -}}
{{- join "," (concat $dns.cidrs $dns.nodeLocal) -}}
{{- else -}}
{{- if $dns.cidrs }}{{ fail "dns.cidrs is only used with dns.destination=cidrs (for a node-local cache next to the cluster's resolver, use dns.nodeLocal)" }}{{ end -}}
{{- join "," (concat (list "cluster") $dns.nodeLocal) -}}
{{- end -}}
{{- end }}

{{/* Template-time checks of combinations the schema cannot express with a clear message. */}}
{{- define "sortie-egress.validate" -}}
{{- $c := .Values.certificates -}}
{{- if eq $c.mode "existingSecret" -}}
{{- if not $c.existingSecret.name }}{{ fail "certificates.mode=existingSecret needs certificates.existingSecret.name: a kubernetes.io/tls Secret (tls.crt, tls.key) in the release namespace" }}{{ end -}}
{{- if not $c.existingSecret.caBundle }}{{ fail "certificates.mode=existingSecret needs certificates.existingSecret.caBundle: the base64 PEM of the CA that signed that Secret's certificate (the API server verifies the webhook with it)" }}{{ end -}}
{{- else -}}
{{- if or $c.existingSecret.name $c.existingSecret.caBundle }}{{ fail (printf "certificates.existingSecret is only used with certificates.mode=existingSecret (mode is %s): set the mode, or remove existingSecret" $c.mode) }}{{ end -}}
{{- end -}}
{{- if and (ne $c.mode "certManager") $c.certManager.issuerRef }}{{ fail (printf "certificates.certManager.issuerRef is only used with certificates.mode=certManager (mode is %s)" $c.mode) }}{{ end -}}
{{- if and (eq $c.mode "certManager") $c.certManager.issuerRef (not $c.certManager.issuerRef.name) }}{{ fail "certificates.certManager.issuerRef needs a name (and kind: Issuer or ClusterIssuer)" }}{{ end -}}
{{- if and .Values.baseline.enabled (not .Values.baseline.namespaces) }}{{ fail "baseline.enabled needs baseline.namespaces: the namespaces where session pods run" }}{{ end -}}
{{- end }}

{{/* Pod scheduling for a component: values, else a preference for different nodes. */}}
{{- define "sortie-egress.scheduling" -}}
{{- $component := .component -}}
{{- $v := .values -}}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
{{- if $v.affinity }}
  {{- toYaml $v.affinity | nindent 2 }}
{{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels: {app.kubernetes.io/name: sortie-egress, app.kubernetes.io/component: {{ $component }}}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
