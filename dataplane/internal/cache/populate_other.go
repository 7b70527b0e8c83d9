//go:build !linux

package cache

const populateFlag = 0
