// Package controllers stands in for sigs.k8s.io/mcs-api/controllers v0.5.2, which the Go module
// proxy does not serve. Cilium uses one constant of it outside its tests; the value is the
// annotation the MCS API documents for a ServiceImport's derived Service. Only the Cilium build
// for the test node (build-cilium.sh) uses this; multi-cluster services are not exercised.
package controllers

// DerivedServiceAnnotation names the Service derived from a ServiceImport.
const DerivedServiceAnnotation = "multicluster.kubernetes.io/derived-service"
