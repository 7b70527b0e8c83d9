package cache

import "syscall"

// populateFlag maps a file's pages when it is opened (MAP_POPULATE).
const populateFlag = syscall.MAP_POPULATE
