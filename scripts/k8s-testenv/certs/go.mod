// Writes the test environment's certificates and kubeconfig (standard library only).
module spiderpool.test/k8s-testenv/certs

go 1.26.0
