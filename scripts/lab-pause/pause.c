/* The lab's pod sandbox process: sleeps until told to stop.
 *
 * Lab machines cannot pull images, so scripts/build-lab-pause packs this
 * program, linked statically, into a one-layer OCI image that containerd
 * on lab workers imports and uses as its sandbox image (and that tests use
 * for pods that must really run). It also reaps children, as PID 1 of a
 * pod's shared PID namespace must. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction quit = {.sa_handler = stop};
  struct sigaction child = {.sa_handler = reap};
  sigaction(SIGINT, &quit, NULL);
  sigaction(SIGTERM, &quit, NULL);
  sigaction(SIGCHLD, &child, NULL);
  for (;;) {
    pause();
  }
  return EXIT_FAILURE;
}
